"""`edgeglm-edge`: the edge agent's command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from common.detect import Detector, DetectorConfig, DetectorError, ImageDecodeError, decode_image
from common.signals import stop_on_signals
from edge.config import ConfigError, EdgeConfig, load_config
from edge.policy.signing import PolicyKeyError

logger = logging.getLogger("edge")

app = typer.Typer(
    help=(
        "EdgeGLM edge agent. Runs a YOLO detector (ONNX Runtime) on gateway cameras, acts on what it is "
        "sure of and forwards only suspicious samples to the cloud. `run` starts the agent daemon, "
        "`check-config` validates edge.yaml, `detect` runs the detector on image files (to check a model on "
        "a gateway before deploying it)."
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at debug level.")] = False,
) -> None:
    """Set up logging for every command."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def detect(
    images: Annotated[list[Path], typer.Argument(help="JPEG or PNG files to run the detector on.")],
    model: Annotated[Path, typer.Option(help="YOLO detection model exported to ONNX by ultralytics.")],
    conf: Annotated[float, typer.Option(min=0.0, max=1.0, help="Minimum score of a detection.")] = 0.25,
    iou: Annotated[float, typer.Option(min=0.0, max=1.0, help="IoU above which NMS drops a box.")] = 0.7,
    provider: Annotated[
        list[str] | None, typer.Option(help="Execution providers in preference order: cuda, openvino, cpu.")
    ] = None,
) -> None:
    """Print one JSON line of detections per image; unreadable images are reported and skipped."""
    providers = provider or ["cpu"]
    try:
        detector = Detector(
            DetectorConfig.model_validate(
                {"model_path": model, "conf_threshold": conf, "iou_threshold": iou, "providers": providers}
            )
        )
    except DetectorError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    failed = 0
    for path in images:
        try:
            frame = decode_image(path.read_bytes(), str(path))
            found = detector.detect(frame)
        except (OSError, ImageDecodeError, DetectorError) as err:
            failed += 1
            typer.echo(f"error: {err}", err=True)
            continue
        record = {
            "image": str(path),
            "detections": [
                {
                    "label": d.label,
                    "class_id": d.class_id,
                    "score": round(d.score, 4),
                    "box": [round(v, 1) for v in d.box],
                }
                for d in found
            ],
        }
        sys.stdout.write(json.dumps(record) + "\n")
    if failed:
        raise typer.Exit(1)


@app.command("check-config")
def check_config(
    path: Annotated[Path, typer.Argument(help="The agent's YAML config (see deploy/edge.example.yaml).")],
    files: Annotated[
        bool,
        typer.Option(
            "--files/--no-files",
            help="Also open the files it names (model, policy key, file cameras, TLS) as `run` would; "
            "--no-files where they live elsewhere (an image, a volume).",
        ),
    ] = True,
) -> None:
    """Validate edge.yaml (and the files it names): print every error with its YAML path and exit 1, or print ok."""
    try:
        config = load_config(path)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from err
    problems = preflight(config) if files else []
    for problem in problems:
        typer.echo(f"{path}: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    uplink = config.uplink
    where = uplink.target if uplink.kind == "grpc" else f"mqtt://{uplink.host}:{uplink.port}"
    tls = " (mutual TLS)" if uplink.kind == "grpc" and uplink.tls is not None else ""
    typer.echo(f"{path}: ok (edge {config.edge_id}, {len(config.cameras)} cameras, uplink {where}{tls})")


def preflight(config: EdgeConfig) -> list[str]:
    """What `run` would fail on, found now: the files the config names, opened as `run` opens them.

    The model is loaded by the detector (a missing, non-ONNX or non-detector file is named), the
    policy key by the verifier (a private key given as the public one is refused), file cameras must
    exist, and TLS files must be PEM. Network cameras and the cloud are not contacted.
    """
    from common.tls import TlsError, read_pem, validity_problem
    from edge.policy.signing import load_public_key
    from edge.sources.config import source_kind

    problems: list[str] = []
    try:
        Detector(config.detector)
    except DetectorError as err:
        problems.append(f"detector.model_path: {err}")
    keys = [("policy.public_key", config.policy.public_key)]
    keys += [(f"policy.extra_public_keys[{i}]", p) for i, p in enumerate(config.policy.extra_public_keys)]
    for where, key in keys:
        if key is None:
            continue
        try:
            load_public_key(key)
        except PolicyKeyError as err:
            problems.append(f"{where}: {err}")
    for index, camera in enumerate(config.cameras):
        if source_kind(camera.url) == "path" and not Path(camera.url).exists():
            problems.append(f"cameras[{index}].url: {camera.url} does not exist (camera {camera.id})")
    uplink = config.uplink
    if uplink.tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            try:
                read_pem(getattr(uplink.tls, name), f"uplink.tls.{name}")
            except TlsError as err:
                problems.append(str(err))
        if (dates := validity_problem(uplink.tls.cert_file)) is not None:
            problems.append(f"uplink.tls.cert_file: {dates}")
    return problems


@app.command()
def run(
    config_path: Annotated[Path, typer.Option("--config", "-c", help="The agent's YAML config.")],
) -> None:
    """Run the edge agent until SIGTERM/SIGINT (a second signal exits at once)."""
    try:
        config = load_config(config_path)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from err
    try:
        asyncio.run(_run_agent(config))
    except (DetectorError, PolicyKeyError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


async def _run_agent(config: EdgeConfig) -> None:
    from edge.agent import EdgeAgent

    stop = stop_on_signals("draining")
    agent = EdgeAgent(config)
    await agent.run(stop)
