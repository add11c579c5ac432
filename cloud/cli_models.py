"""`edgeglm-cloud model ...` and `edgeglm-cloud rollout ...`: publish edge models, roll them out.

`model publish` and `model list` work on the registry folder itself (no service needed: the model is
described by the detector runtime and signed with the cloud's key); the `rollout` commands steer a
running service through its admin API (/api/rollout), like `policy set`.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

model_app = typer.Typer(help="Edge models in the cloud's registry (models.registry).", no_args_is_help=True)
rollout_app = typer.Typer(
    help="Roll a published model out to the fleet through a running service: canaries first, then everyone.",
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="cloud.yaml to take models.registry and policy.signing_key from.")
]
RegistryOption = Annotated[Path | None, typer.Option("--registry", help="The registry folder (else cloud.yaml's).")]
AdminOption = Annotated[str, typer.Option("--admin", help="Admin API of the running service, e.g. http://host:8080.")]
TokenOption = Annotated[
    Path | None,
    typer.Option("--token-file", help="File with an operator's admin token; default: $EDGEGLM_ADMIN_TOKEN if set."),
]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why: kept in the rollout's history.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _from_config(config: Path | None, registry: Path | None, key: Path | None) -> tuple[Path, Path | None]:
    """The registry folder and signing key: given, or from cloud.yaml."""
    from cloud.config import ConfigError, load_config

    if config is not None:
        try:
            loaded = load_config(config)
        except ConfigError as err:
            raise _fail(str(err), 2) from err
        registry = registry or loaded.models.registry
        key = key or loaded.policy.signing_key
    if registry is None:
        raise _fail("no registry: give --registry, or --config with models.registry set", 2)
    return registry, key


@model_app.command("publish")
def publish(
    onnx: Annotated[Path, typer.Argument(help="The ONNX detector file (an ultralytics export).")],
    version: Annotated[str, typer.Option(help="Its version; published once, never changed.")],
    name: Annotated[str, typer.Option(help="Model name.")] = "edge",
    parent: Annotated[str, typer.Option(help="The version it was fine-tuned from.")] = "",
    metrics: Annotated[
        Path | None, typer.Option(help="JSON file of evaluation results to carry in the manifest.")
    ] = None,
    config: ConfigOption = None,
    registry: RegistryOption = None,
    signing_key: Annotated[
        Path | None, typer.Option("--signing-key", help="The cloud's Ed25519 signing key (else cloud.yaml's).")
    ] = None,
) -> None:
    """Describe, sign and publish a model file; prints what a policy names it by."""
    from cloud.models.registry import ModelRegistry, RegistryError
    from cloud.policy import SigningKeyError, load_private_key
    from common.detect import DetectorError
    from common.manifest import ManifestError, describe_model

    folder, key_path = _from_config(config, registry, signing_key)
    if key_path is None:
        raise _fail("no signing key: give --signing-key, or --config with policy.signing_key set", 2)
    try:
        key = load_private_key(key_path)
        results: dict[str, Any] = json.loads(metrics.read_text()) if metrics is not None else {}
        manifest = describe_model(
            onnx,
            name=name,
            version=version,
            parent=parent,
            metrics=results,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        published = ModelRegistry(folder).publish(onnx, manifest, key)
    except (SigningKeyError, DetectorError, ManifestError, RegistryError, OSError, ValueError) as err:
        raise _fail(str(err)) from err
    typer.echo(f"published {published.uri}: {manifest.size_bytes} bytes, sha256 {manifest.sha256}")
    typer.echo(f"classes {', '.join(manifest.classes)}; input {manifest.input_size[0]}x{manifest.input_size[1]}")
    typer.echo(f"roll it out: edgeglm-cloud rollout start --admin URL --name {name} --version {version}")


@model_app.command("list")
def list_models(config: ConfigOption = None, registry: RegistryOption = None) -> None:
    """The published models, one per line."""
    from cloud.models.registry import ModelRegistry

    folder, _ = _from_config(config, registry, None)
    found = ModelRegistry(folder).list()
    if not found:
        typer.echo(f"{folder}: no model published")
    for model in found:
        m = model.manifest
        typer.echo(
            f"{m.name} {m.version}  parent {m.parent or '-'}  {m.size_bytes} bytes  {m.sha256[:12]}  {m.created_at}"
        )


def _admin(
    method: str, admin: str, path: str, token_file: Path | None, timeout: float, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    import httpx

    url = f"{admin.rstrip('/')}{path}"
    try:
        token = token_file.read_text().strip() if token_file else os.environ.get("EDGEGLM_ADMIN_TOKEN", "")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = httpx.request(method, url, json=body, headers=headers, timeout=timeout)
    except (httpx.HTTPError, OSError) as err:
        raise _fail(f"{url}: {err}", 2) from err
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text[:500]
        raise _fail(f"{url}: HTTP {response.status_code}: {detail}", 2 if response.status_code in (401, 403) else 1)
    result: dict[str, Any] = response.json()
    return result


def _show(state: dict[str, Any]) -> None:
    rollout = state.get("rollout")
    if rollout is None:
        typer.echo("no rollout has begun")
        return
    model = rollout["model"]
    typer.echo(f"{model['name']} {model['version']}: {rollout['stage']}")
    typer.echo(f"canaries: {', '.join(rollout['canaries'])} (switched: {', '.join(rollout['switched']) or 'none yet'})")
    canary, baseline = rollout["canary"], state["baseline"]

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    typer.echo(
        f"rejection rate: canaries {rate(state['canary_rejection_rate'])} of "
        f"{canary['confirmed'] + canary['rejected']}, baseline {rate(state['baseline_rejection_rate'])} of "
        f"{baseline['confirmed'] + baseline['rejected']}"
    )
    for entry in rollout["history"]:
        at = datetime.fromtimestamp(entry["at"], UTC).isoformat(timespec="seconds")
        typer.echo(f"  {at} {entry['stage']}: {entry['why']} (by {entry['who']})")


@rollout_app.command("start")
def start(
    admin: AdminOption,
    version: Annotated[str, typer.Option(help="The published version to roll out.")],
    name: Annotated[str, typer.Option(help="Model name.")] = "edge",
    canary: Annotated[list[str] | None, typer.Option("--canary", help="A canary edge (repeat); else a share.")] = None,
    fraction: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Share of connected edges (else models.rollout's).")
    ] = None,
    token_file: TokenOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the service.")] = 10.0,
) -> None:
    """Give the model to its canaries; the service promotes it or rolls it back by its rule."""
    body = {"name": name, "version": version, "canaries": canary or None, "canary_fraction": fraction}
    _show(_admin("POST", admin, "/api/rollout", token_file, timeout, body))


@rollout_app.command("status")
def status(admin: AdminOption, token_file: TokenOption = None, timeout: float = 10.0) -> None:
    """The latest rollout: stage, canaries, health against the baseline, history."""
    _show(_admin("GET", admin, "/api/rollout", token_file, timeout))


def _steer(action: str) -> None:
    def command(admin: AdminOption, reason: ReasonOption = "", token_file: TokenOption = None) -> None:
        _show(_admin("POST", admin, f"/api/rollout/{action}", token_file, 10.0, {"reason": reason}))

    command.__doc__ = {
        "pause": "Hold the canary stage: nothing moves until resume.",
        "resume": "Judge the canaries again.",
        "promote": "Give every edge the model now.",
        "rollback": "Undo: the canaries (or after a promotion, the fleet) go back to what ran before.",
    }[action]
    rollout_app.command(action)(command)


for _action in ("pause", "resume", "promote", "rollback"):
    _steer(_action)
