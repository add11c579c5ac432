"""`edgeglm-cloud`: the cloud service's command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from cloud.cli_models import model_app, rollout_app
from common.signals import stop_on_signals
from protos import policy_pb2, sample_pb2, session_pb2, verdict_pb2

if TYPE_CHECKING:
    from cloud.config import CloudConfig

MESSAGE_TYPES: dict[str, type[Message]] = {
    "sample": sample_pb2.Sample,
    "verdict": verdict_pb2.Verdict,
    "signed-policy": policy_pb2.SignedPolicy,
    "policy": policy_pb2.Policy,
    "edge-message": session_pb2.EdgeMessage,
    "cloud-message": session_pb2.CloudMessage,
}

logger = logging.getLogger("cloud")
app = typer.Typer(
    help=(
        "EdgeGLM cloud service. Receives suspicious samples from edge agents over gRPC or MQTT, judges them "
        "with a large model and pushes verdicts and policies back. `serve` runs it, `check-config` validates "
        "cloud.yaml, `keygen` makes the policy signing key, `policy set` changes the policy of a running "
        "service, `decode` turns a wire message (for example an MQTT payload saved to a file) into readable JSON, "
        "`pki` issues certificates, `dataset export` writes the field dataset as a YOLO dataset, `model publish` "
        "signs an edge model into the registry and `rollout start` rolls it out (canaries first, automatic rollback)."
    ),
    no_args_is_help=True,
    add_completion=False,
)
policy_app = typer.Typer(help="Policies of a running cloud service (through its admin API).", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(model_app, name="model")
app.add_typer(rollout_app, name="rollout")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at debug level.")] = False,
) -> None:
    """EdgeGLM cloud service."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command("check-config")
def check_config(
    path: Annotated[Path, typer.Argument(help="The service's YAML config (see deploy/cloud.example.yaml).")],
) -> None:
    """Validate cloud.yaml: print every error with its YAML path and exit 1, or print ok."""
    from cloud.config import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from err
    typer.echo(
        f"{path}: ok (backend {config.backend.kind}, gRPC port {config.server.port}, "
        f"{len(config.policy.edges)} edge overrides)"
    )


@app.command()
def serve(
    config_path: Annotated[Path, typer.Option("--config", "-c", help="The service's YAML config.")],
) -> None:
    """Run the cloud service until SIGTERM/SIGINT (a second signal exits at once)."""
    from cloud.api.auth import AdminAuthError
    from cloud.backends import BackendStartError
    from cloud.config import ConfigError, load_config
    from cloud.policy import SigningKeyError
    from cloud.store import StoreError
    from common.tls import TlsError

    try:
        config = load_config(config_path)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from err
    try:
        asyncio.run(_serve(config))
    except (BackendStartError, SigningKeyError, StoreError, AdminAuthError, TlsError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


async def _serve(config: CloudConfig) -> None:
    from cloud.service import CloudService

    stop = stop_on_signals("shutting down")
    service = CloudService(config)
    await service.start()
    logger.info("listening: gRPC port %d, admin port %s", service.port, service.admin_port or "off")
    failed = asyncio.create_task(service.failed.wait())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        failed.cancel()
        stopped.cancel()
        await service.stop()
    if service.failed.is_set():
        logger.error("exiting with status 1: %s", service.failure)
        raise SystemExit(1)


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Folder for policy-signing.key and policy-signing.pub.")],
    force: Annotated[bool, typer.Option(help="Replace a key already there.")] = False,
) -> None:
    """Create the Ed25519 key pair policies are signed with (the .pub goes to every edge)."""
    from cloud.policy import SigningKeyError, key_id, load_private_key, write_keypair

    try:
        private_path, public_path = write_keypair(out, overwrite=force)
    except (SigningKeyError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"private key {private_path} (keep it on the cloud only)")
    typer.echo(f"public key  {public_path} (install on the edges: policy.public_key)")
    typer.echo(f"key id      {key_id(load_private_key(private_path).public_key())}")


pki_app = typer.Typer(
    help="A small PKI for mutual TLS between the edges and the cloud (a CA in a folder; keep ca.key off the fleet).",
    no_args_is_help=True,
)
app.add_typer(pki_app, name="pki")
CaOption = Annotated[Path, typer.Option("--dir", help="The CA's folder (ca.crt, ca.key, issued.jsonl, revoked.txt).")]


def _pki(action: Callable[[], str]) -> None:
    from common.tls import TlsError

    try:
        typer.echo(action())
    except TlsError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err


@pki_app.command("init")
def pki_init(ca: CaOption) -> None:
    """Make the fleet's CA (server.tls.client_ca_file on the cloud, uplink.tls.ca_file on the edges)."""
    from common.tls import FleetCA

    def run() -> str:
        made = FleetCA(ca).create()
        return f"CA {made.cert_file} (share it); its key {made.key_file} (keep it off the cloud and the edges)"

    _pki(run)


@pki_app.command("issue-server")
def pki_issue_server(
    ca: CaOption,
    names: Annotated[list[str], typer.Argument(help="DNS names and addresses the edges reach the cloud by.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for <first name>.crt and .key.")] = Path("."),
) -> None:
    """Issue the cloud's server certificate (server.tls.cert_file / key_file)."""
    from common.tls import FleetCA

    def run() -> str:
        issued = FleetCA(ca).issue_server(out, names)
        return f"server {issued.cert_file} and {issued.key_file}"

    _pki(run)


@pki_app.command("issue-edge")
def pki_issue_edge(
    ca: CaOption,
    edge: Annotated[str, typer.Argument(help="The edge id: the only id this certificate may speak for.")],
    site: Annotated[str | None, typer.Option("--site", help="The edge's site: its Hello must name it.")] = None,
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="Lifetime of the certificate.")] = 825,
    out: Annotated[Path, typer.Option("--out", help="Folder for <edge>.crt and <edge>.key.")] = Path("."),
) -> None:
    """Issue one edge's client certificate (uplink.tls.cert_file / key_file in its edge.yaml)."""
    from common.tls import FleetCA

    def run() -> str:
        issued = FleetCA(ca).issue_edge(out, edge, site, days)
        return f"edge {edge}: {issued.cert_file} and {issued.key_file} (valid {days} days)"

    _pki(run)


@pki_app.command("revoke")
def pki_revoke(
    ca: CaOption,
    edge: Annotated[str, typer.Argument(help="The edge whose every certificate is revoked.")],
) -> None:
    """Revoke an edge's certificates: their serials go to revoked.txt, the cloud's server.tls.revoked_file."""
    from common.tls import FleetCA

    def run() -> str:
        made = FleetCA(ca)
        added = made.revoke(edge)
        return f"revoked {len(added)} certificate(s) of {edge} in {made.revoked_file}"

    _pki(run)


@policy_app.command("set")
def policy_set(
    path: Annotated[Path, typer.Argument(help="Policy settings in YAML or JSON; - for stdin.")],
    admin: Annotated[str, typer.Option("--admin", help="Admin API of the running service, e.g. http://host:8080.")],
    edge: Annotated[str | None, typer.Option("--edge", help="Set this edge's override instead of the fleet.")] = None,
    site: Annotated[str | None, typer.Option("--site", help="Set this site's override instead of the fleet.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the service.")] = 10.0,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="File with an operator's admin token (admin.users); default: $EDGEGLM_ADMIN_TOKEN if set.",
        ),
    ] = None,
) -> None:
    """Send new policy settings to a running service and print the version it published."""
    import os

    import httpx

    if edge and site:
        raise typer.BadParameter("give --edge or --site, not both")
    body = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    target = f"edges/{edge}" if edge else f"sites/{site}" if site else "fleet"
    url = f"{admin.rstrip('/')}/policies/{target}"
    try:
        token = token_file.read_text().strip() if token_file else os.environ.get("EDGEGLM_ADMIN_TOKEN", "")
        headers = {"content-type": "application/yaml"} | ({"authorization": f"Bearer {token}"} if token else {})
        response = httpx.put(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as err:
        typer.echo(f"error: {url}: {err}", err=True)
        raise typer.Exit(2) from err
    if response.status_code in (401, 403):
        typer.echo(f"error: {url}: {response.json().get('detail')} (give --token-file)", err=True)
        raise typer.Exit(2)
    if response.status_code == 422:
        for problem in response.json().get("detail", []):
            typer.echo(f"{path}: {problem['loc']}: {problem['msg']}", err=True)
        raise typer.Exit(1)
    if response.status_code != 200:
        typer.echo(f"error: {url}: HTTP {response.status_code}: {response.text[:500]}", err=True)
        raise typer.Exit(2)
    result = response.json()
    scope = result["scope"] + (f" {result['scope_id']}" if result["scope_id"] else "")
    typer.echo(f"policy v{result['version']} published ({scope})")


@app.command()
def decode(
    path: Annotated[Path, typer.Argument(help="File holding one serialized protobuf message; - for stdin.")],
    kind: Annotated[str, typer.Option(help=f"Message type: {', '.join(MESSAGE_TYPES)}.")] = "sample",
) -> None:
    """Print a serialized EdgeGLM message as JSON (image bytes shown as base64)."""
    if kind not in MESSAGE_TYPES:
        raise typer.BadParameter(f"{kind!r} is not a message type (expected one of {', '.join(MESSAGE_TYPES)})")
    data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    message = MESSAGE_TYPES[kind]()
    try:
        message.ParseFromString(data)
    except DecodeError as err:
        typer.echo(f"error: {path}: not a serialized {kind} message ({err})", err=True)
        raise typer.Exit(1) from err
    typer.echo(json_format.MessageToJson(message, preserving_proto_field_name=True))


dataset_app = typer.Typer(
    help="The field dataset (cloud.yaml dataset:): every judged sample kept as a training record.",
    no_args_is_help=True,
)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("export")
def dataset_export(
    out: Annotated[Path, typer.Option("--out", help="Folder for the YOLO dataset (images/, labels/, data.yaml).")],
    config: Annotated[
        Path | None, typer.Option("--config", help="cloud.yaml whose dataset.path to read (default: --dir).")
    ] = None,
    folder: Annotated[Path | None, typer.Option("--dir", help="The field dataset's folder (dataset.path).")] = None,
    classes: Annotated[
        str,
        typer.Option(help="Class names in the edge model's order, comma-separated (default: every label, sorted)."),
    ] = "",
    val_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of the groups put in val.")] = 0.2,
    group_s: Annotated[
        float, typer.Option(min=1.0, help="Untracked records of a camera within this many seconds stay together.")
    ] = 60.0,
) -> None:
    """Write the field dataset as a YOLO dataset, split by track or time window, with report.json; print it."""
    from cloud.config import ConfigError, load_config
    from cloud.dataset import DatasetConfig, FieldDataset, export_yolo
    from cloud.metrics import CloudMetrics

    if (config is None) == (folder is None):
        raise typer.BadParameter("give either --config or --dir")
    database = None
    try:
        if config is not None:
            loaded = load_config(config)
            settings = loaded.dataset
            if loaded.store.kind == "postgres":  # the records are in the shared database
                from cloud.store.pg import postgres_database

                database = postgres_database(loaded.store.dsn_file_required, "field dataset", 2)
        else:
            settings = DatasetConfig(path=folder)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    if database is None and not (settings.path / "index.sqlite").is_file():
        typer.echo(f"error: {settings.path} holds no field dataset (no index.sqlite)", err=True)
        raise typer.Exit(1)

    async def read() -> tuple[list[Any], Any]:
        dataset = FieldDataset(settings, CloudMetrics(), database=database)
        await dataset.open()
        try:
            return await dataset.records(), dataset.images
        finally:
            await dataset.close()

    names = [name.strip() for name in classes.split(",") if name.strip()] or None
    records, images = asyncio.run(read())
    report = export_yolo(records, images, out, names, val_share, group_s)
    summary = report.to_json()
    typer.echo(
        f"{out}: {summary['images']['train']} train and {summary['images']['val']} val images "
        f"({summary['backgrounds']['train'] + summary['backgrounds']['val']} background), classes "
        f"{', '.join(summary['classes']) or '-'}; left out: {summary['left_out'] or 'none'}; see {out / 'report.json'}"
    )


@app.command("train-edge")
def train_edge(
    field: Annotated[Path, typer.Option("--field", help="The field dataset as exported by `dataset export --out`.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: the mix, candidate.onnx, report.json and .md.")],
    weights: Annotated[
        Path, typer.Option("--weights", help="Starting weights of the current model (`make edge-weights`).")
    ] = Path("sim/models/edge.pt"),
    current: Annotated[
        Path | None,
        typer.Option("--current", help="The current edge model (ONNX) while the registry holds no --name model."),
    ] = None,
    current_version: Annotated[
        str, typer.Option(help="The version --current is known by (the candidate's parent).")
    ] = "",
    base: Annotated[
        Path | None,
        typer.Option("--base", help="The world dataset (train and test splits); default: generated from --base-seed."),
    ] = None,
    base_seed: Annotated[int, typer.Option(min=0, help="Seed of the generated world dataset.")] = 0,
    config: Annotated[
        Path | None, typer.Option("--config", help="cloud.yaml to take policy.signing_key and models.registry from.")
    ] = None,
    registry: Annotated[Path | None, typer.Option("--registry", help="The model registry folder.")] = None,
    signing_key: Annotated[
        Path | None, typer.Option("--signing-key", help="The cloud's Ed25519 policy signing key (PKCS8 PEM).")
    ] = None,
    name: Annotated[str, typer.Option(help="Model name in the registry.")] = "edge",
    version: Annotated[str, typer.Option(help="Version of a promoted candidate (default ft-<UTC time>).")] = "",
    publish: Annotated[bool, typer.Option(help="Publish a promoted candidate into the registry.")] = True,
    train_python: Annotated[
        Path | None, typer.Option(help="Python of the training environment (ultralytics); default: this one.")
    ] = None,
    weights_dir: Annotated[
        Path | None,
        typer.Option(help="Keep promoted weights here as <version>.pt, and start from the current version's."),
    ] = None,
    # Unset: the defaults of cloud.retrain.config (the one place they are), listed in docs/retraining.md.
    epochs: Annotated[int | None, typer.Option(help="Fine-tune epochs.")] = None,
    base_images: Annotated[int | None, typer.Option(help="Base training images mixed in.")] = None,
    field_repeat: Annotated[int | None, typer.Option(help="Copies of each field training image.")] = None,
    lr0: Annotated[float | None, typer.Option(help="Learning rate of the fine-tune.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Deadline of the fine-tune in seconds.")] = None,
    metric: Annotated[str | None, typer.Option(help="Score the rule compares: map50 or map50_95.")] = None,
    min_field_gain: Annotated[float | None, typer.Option(help="The field score must rise by more than this.")] = None,
    max_base_drop: Annotated[float | None, typer.Option(help="The base score may fall by at most this.")] = None,
    min_field_images: Annotated[int | None, typer.Option(help="Held-out field images needed to decide.")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Score at most this many images per split.")] = None,
) -> None:
    """Fine-tune the edge model on the field dataset mixed with the world's, compare it with the current
    model, and publish it signed when the promotion rule holds (docs/retraining.md)."""
    from pydantic import ValidationError

    from cloud.config import ConfigError, load_config
    from cloud.models.registry import RegistryError
    from cloud.policy import SigningKeyError
    from cloud.retrain.command import TrainEdgeRequest
    from cloud.retrain.command import train_edge as run
    from cloud.retrain.config import RetrainConfig
    from cloud.retrain.evaluate import RetrainDataError
    from cloud.retrain.publish import utc_now
    from cloud.retrain.train import FineTuneError
    from common.manifest import ManifestError

    def given(**values: Any) -> dict[str, Any]:
        return {key: value for key, value in values.items() if value is not None}

    fine_tune = given(epochs=epochs, base_images=base_images, field_repeat=field_repeat, lr0=lr0, timeout_s=timeout)
    rule = given(
        metric=metric, min_field_gain=min_field_gain, max_base_drop=max_base_drop, min_field_images=min_field_images
    )
    try:
        settings = RetrainConfig.model_validate({"fine_tune": fine_tune, "rule": rule, **given(eval_limit=eval_limit)})
        if config is not None:
            loaded = load_config(config)
            signing_key = signing_key or loaded.policy.signing_key
            registry = registry or loaded.models.registry
    except ValidationError as err:
        for problem in err.errors():
            typer.echo(f"train-edge: {'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}", err=True)
        raise typer.Exit(2) from err
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    request = TrainEdgeRequest(
        field=field,
        out=out,
        weights=weights,
        config=settings,
        current=current,
        current_version=current_version,
        base=base,
        base_seed=base_seed,
        registry=registry,
        signing_key=signing_key,
        name=name,
        version=version,
        publish=publish,
        train_python=train_python,
        weights_dir=weights_dir,
    )
    try:
        report = run(request, utc_now())
    except (RetrainDataError, SigningKeyError, RegistryError, ManifestError, FineTuneError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    decision = report.decision
    typer.echo(f"{'promoted' if decision.promote else 'not promoted'}: {'; '.join(decision.reasons)}")
    if report.published:
        typer.echo(f"published {report.published['uri']} (sha256 {report.published['sha256']})")
    typer.echo(f"report: {out / 'report.json'}, {out / 'report.md'}")
