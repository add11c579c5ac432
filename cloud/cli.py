"""`edgeglm-cloud`: the cloud service's command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from protos import policy_pb2, sample_pb2, session_pb2, verdict_pb2

MESSAGE_TYPES: dict[str, type[Message]] = {
    "sample": sample_pb2.Sample,
    "verdict": verdict_pb2.Verdict,
    "signed-policy": policy_pb2.SignedPolicy,
    "policy": policy_pb2.Policy,
    "edge-message": session_pb2.EdgeMessage,
    "cloud-message": session_pb2.CloudMessage,
}

app = typer.Typer(
    help=(
        "EdgeGLM cloud service. Receives suspicious samples from edge agents over gRPC or MQTT, judges them "
        "with a large model and pushes verdicts and policies back. `decode` turns a wire message (for "
        "example an MQTT payload saved to a file) into readable JSON."
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """EdgeGLM cloud service."""


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
