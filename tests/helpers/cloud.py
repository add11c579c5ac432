"""A cloud service for tests: a generated clip, samples of it, a config on free ports with the oracle
backend on that clip, the running service, a client channel and Session helpers, metric reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from cloud.config import CloudConfig
from cloud.service import CloudService
from protos import session_pb2, session_pb2_grpc, status_pb2
from sim.world.clips import ClipSpec, write_clip
from sim.world.samples import busy_frames as clip_busy_frames
from sim.world.samples import clip_truth, frame_sample

WAIT_S = 20.0
EDGE = "gw-1"


def make_clip(folder: Path) -> Path:
    """A three-second clip with objects on screen in nearly every frame (seed chosen for that)."""
    return write_clip(ClipSpec(seed=4, seconds=3, fps=5, quiet_start_seconds=0.0, mean_gap_seconds=0.5), folder)


def truth(clip: Path) -> dict[int, list[dict[str, Any]]]:
    """Ground-truth objects by frame number."""
    return clip_truth(clip)


def busy_frames(clip: Path) -> list[int]:
    """Frames with at least one object."""
    return clip_busy_frames(clip)


def make_sample(clip: Path, frame: int, sample_id: str, edge_id: str = EDGE, jpeg: bytes | None = None) -> Any:
    """A full-frame sample of `frame` whose edge detections are the true objects (so the oracle confirms)."""
    return frame_sample(clip, frame, sample_id, edge_id, jpeg)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_config(tmp_path: Path, clip: Path, **sections: Any) -> CloudConfig:
    """A config on free ports with the oracle backend on `clip`; `sections` override parts of it."""
    raw = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5},
        "backend": {"kind": "oracle", "ground_truth": {"cam0": str(clip)}, "delay_ms": 5, "jitter_ms": 0},
        "batcher": {"max_queue_delay_ms": 2},
        "store": {"path": str(tmp_path / "state" / "verdicts.sqlite")},
        "policy": {"signing_key": str(tmp_path / "keys" / "policy-signing.key"), "create_signing_key": True},
        "admin": {"enabled": False},
    }
    return CloudConfig.model_validate(_merge(raw, sections))


@asynccontextmanager
async def running(config: CloudConfig) -> AsyncIterator[CloudService]:
    """A started service, stopped on exit."""
    service = CloudService(config)
    await asyncio.wait_for(service.start(), WAIT_S)
    try:
        yield service
    finally:
        await asyncio.wait_for(service.stop(), WAIT_S)


@asynccontextmanager
async def channel(service: CloudService, **options: int) -> AsyncIterator[Any]:
    """A real client channel to the service and its EdgeGLM stub."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}", options=list(options.items())) as chan:
        yield session_pb2_grpc.EdgeGLMStub(chan)


async def read(call: Any) -> session_pb2.CloudMessage:
    """The next message of a Session call, within WAIT_S."""
    message = await asyncio.wait_for(call.read(), WAIT_S)
    assert isinstance(message, session_pb2.CloudMessage), "the stream ended"
    return message


async def open_session(stub: Any, edge_id: str = EDGE, policy_version: int = 0) -> tuple[Any, Any]:
    """A Session that said Hello; returns the call and the policy the cloud answered with."""
    call = stub.Session()
    await call.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id=edge_id, policy_version=policy_version)))
    first = await read(call)
    assert first.WhichOneof("kind") == "policy"
    return call, first.policy


def counter(service: CloudService, name: str, **labels: str) -> float:
    """A metric's current value."""
    value = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def send(service: CloudService, clip: Path, edge_id: str, frames: list[int], prefix: str) -> list[Any]:
    """Send one sample per frame over a Session and wait for every verdict; returns the samples sent."""
    samples = [make_sample(clip, frame, f"{prefix}-{frame:03d}", edge_id) for frame in frames]
    return await send_samples(service, edge_id, samples)


async def send_samples(service: CloudService, edge_id: str, samples: list[Any]) -> list[Any]:
    """Send `samples` of `edge_id` over one Session and wait for every verdict; returns them."""
    async with channel(service) as stub:
        call, _ = await open_session(stub, edge_id)
        status = status_pb2.EdgeStatus(edge_id=edge_id, state=status_pb2.EDGE_STATE_ONLINE, policy_version=1)
        await call.write(session_pb2.EdgeMessage(heartbeat=status))
        for sample in samples:
            await call.write(session_pb2.EdgeMessage(sample=sample))
        verdicts = 0
        while verdicts < len(samples):
            verdicts += (await read(call)).WhichOneof("kind") == "verdict"
        call.cancel()
    return samples
