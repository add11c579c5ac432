"""Getting a model's file and signed manifest onto the edge's disk, resuming what a cut left.

Two sources, by the ModelRef's URI:
- ``edgeglm://<name>/<version>``: the cloud's registry over the edge's own uplink (gRPC: the
  `FetchModel` call, with the same channel, TLS identity and deadline rules as the Session; MQTT:
  the edge's models topic through the broker, under its broker identity). A download that is cut
  leaves its ``.part`` file; the next attempt asks from the part's size on.
- ``file:///path/model.onnx``: a file on the edge's disk (a USB stick, a volume), with its signed
  manifest beside it as ``manifest.json`` (the cloud registry's layout) or ``<file>.manifest.json``.

Errors are of two kinds: `FetchError` (the link or the cloud failed: try again later, resuming) and
`ModelRefusedError` (the file is wrong: a new download would not fix it, the policy must change).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

import grpc

from common.manifest import MODEL_URI_SCHEME, ModelServeError, parse_model_uri
from protos import session_pb2
from protos.policy_settings import ModelRef

ChunkSource = Callable[[session_pb2.FetchModelRequest, float], AsyncIterator[session_pb2.ModelChunk]]


class FetchError(Exception):
    """A download that did not finish (link, cloud or local disk); the next attempt resumes it."""


class ModelRefusedError(Exception):
    """A model file that is not acceptable; `reason` is the metric label, the message says what and where."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def fetch(
    ref: ModelRef,
    part: Path,
    edge_id: str,
    chunks: ChunkSource,
    timeout_s: float,
    on_bytes: Callable[[int], None],
) -> bytes:
    """Bring `ref`'s file into `part` (resuming it) and return its signed manifest's bytes."""
    if ref.uri.startswith(MODEL_URI_SCHEME):
        return await _fetch_grpc(ref, part, edge_id, chunks, timeout_s, on_bytes)
    if ref.uri.startswith("file://"):
        return await asyncio.to_thread(_fetch_file, ref, part, on_bytes)
    raise ModelRefusedError("unsupported_uri", f"model {ref.name} {ref.version}: cannot fetch {ref.uri!r}")


def _registry_name(ref: ModelRef) -> tuple[str, str]:
    try:
        return parse_model_uri(ref.uri)
    except ValueError as err:
        raise ModelRefusedError("unsupported_uri", str(err)) from err


async def _fetch_grpc(
    ref: ModelRef, part: Path, edge_id: str, chunks: ChunkSource, timeout_s: float, on_bytes: Callable[[int], None]
) -> bytes:
    name, version = _registry_name(ref)
    try:
        handle = await asyncio.to_thread(_open_part, part, ref.size_bytes)
    except OSError as err:
        raise FetchError(f"{part}: cannot write the download ({err.strerror})") from err
    have = handle.tell()
    request = session_pb2.FetchModelRequest(edge_id=edge_id, name=name, version=version, offset=have)
    manifest = b""
    try:
        with handle:
            async for chunk in chunks(request, timeout_s):
                if chunk.manifest:
                    manifest = chunk.manifest
                if chunk.total_size != ref.size_bytes:
                    raise ModelRefusedError(
                        "size",
                        f"model {ref.name} {ref.version}: the cloud serves {chunk.total_size} bytes, "
                        f"the policy says {ref.size_bytes}",
                    )
                if chunk.offset != have:
                    raise FetchError(f"model {ref.name} {ref.version}: piece at {chunk.offset}, expected {have}")
                if chunk.data:
                    await asyncio.to_thread(handle.write, chunk.data)
                    have += len(chunk.data)
                    on_bytes(len(chunk.data))
            await asyncio.to_thread(_sync, handle)
    except ModelServeError as err:
        if err.code in (grpc.StatusCode.NOT_FOUND.name, grpc.StatusCode.FAILED_PRECONDITION.name):
            raise ModelRefusedError("not_published", f"model {ref.name} {ref.version}: the cloud says {err}") from err
        raise FetchError(
            f"model {ref.name} {ref.version}: download cut at {have} of {ref.size_bytes} bytes ({err.code}: {err})"
        ) from err
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            raise ModelRefusedError(
                "not_published", f"model {ref.name} {ref.version}: the cloud says {err.details()}"
            ) from err
        raise FetchError(
            f"model {ref.name} {ref.version}: download cut at {have} of {ref.size_bytes} bytes "
            f"({err.code().name}: {err.details()})"
        ) from err
    except ConnectionError as err:
        raise FetchError(f"model {ref.name} {ref.version}: {err}") from err
    except OSError as err:
        raise FetchError(f"{part}: cannot write the download ({err.strerror})") from err
    if have != ref.size_bytes:
        raise FetchError(f"model {ref.name} {ref.version}: stream ended at {have} of {ref.size_bytes} bytes")
    if not manifest:
        raise ModelRefusedError("manifest", f"model {ref.name} {ref.version}: the cloud sent no manifest")
    return manifest


def _open_part(part: Path, size: int) -> BinaryIO:
    """The part file for appending, positioned at its end; restarted when it is longer than the file."""
    handle = part.open("ab")
    if handle.tell() > size:  # not a prefix of the right file
        handle.truncate(0)
        handle.seek(0)
    return handle


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _fetch_file(ref: ModelRef, part: Path, on_bytes: Callable[[int], None]) -> bytes:
    source = Path(unquote(urlparse(ref.uri).path))
    if not source.is_file():
        raise FetchError(f"model {ref.name} {ref.version}: {source} is not there (yet)")
    beside = [source.parent / "manifest.json", source.with_name(source.name + ".manifest.json")]
    manifest_path = next((path for path in beside if path.is_file()), None)
    if manifest_path is None:
        raise ModelRefusedError(
            "manifest", f"model {ref.name} {ref.version}: no signed manifest beside {source} ({beside[0].name})"
        )
    try:
        shutil.copyfile(source, part)
        manifest = manifest_path.read_bytes()
    except OSError as err:
        raise FetchError(f"{source}: cannot copy the model ({err.strerror})") from err
    on_bytes(part.stat().st_size)
    return manifest
