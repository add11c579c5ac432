"""What mutual TLS costs on the Session stream: samples/s through one cloud with and without it.

Run as ``python -m bench.tls --out bench/results/tls.json`` (``make bench``). A real cloud service
(oracle backend with no modelled delay, SQLite store) on loopback, and `streams` Session streams of
one edge each, every stream writing `samples` full-frame samples (640x480 JPEGs, about 40 kB) and
reading their acks and verdicts. Rounds alternate plain and TLS so the shared machine's noise falls
on both; the figure that matters is the ratio of the medians, measured side by side in one run.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.progress import Progress

from bench.cloud import machine_facts
from cloud.config import CloudConfig
from cloud.service import CloudService
from common.tls import FleetCA
from edge.config import GrpcUplinkConfig
from edge.uplink.grpc import open_channel
from protos import sample_pb2, session_pb2, session_pb2_grpc
from sim.world.clips import ClipSpec, write_clip
from sim.world.samples import busy_frames, frame_sample


def _samples(clip: Path, edge_id: str, count: int) -> list[sample_pb2.Sample]:
    frames = busy_frames(clip)
    return [
        frame_sample(clip, frames[i % len(frames)], f"{edge_id}-{i}-{time.monotonic_ns()}", edge_id)
        for i in range(count)
    ]


async def _stream(stub: Any, edge_id: str, samples: list[sample_pb2.Sample]) -> None:
    call = stub.Session()
    await call.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id=edge_id)))
    await call.read()  # the policy
    for sample in samples:
        await call.write(session_pb2.EdgeMessage(sample=sample))
    verdicts = 0
    while verdicts < len(samples):
        message = await call.read()
        if message is grpc.aio.EOF:  # type: ignore[attr-defined]  # grpc-stubs lack it
            raise RuntimeError(f"{edge_id}: the stream ended after {verdicts} verdicts")
        verdicts += message.WhichOneof("kind") == "verdict"
    call.cancel()


async def _round(root: Path, clip: Path, tls: bool, streams: int, samples: int, index: int) -> float:
    folder = root / f"round-{index}-{'tls' if tls else 'plain'}"
    ca = FleetCA(root / "ca")
    server: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "max_samples_in_flight_per_session": samples}
    if tls:
        issued = ca.issue_server(root / "ca", ["localhost"])
        server["tls"] = {"cert_file": issued.cert_file, "key_file": issued.key_file, "client_ca_file": ca.cert_file}
    config = CloudConfig.model_validate(
        {
            "server": server,
            "backend": {"kind": "oracle", "ground_truth": {"cam0": str(clip)}, "delay_ms": 0, "jitter_ms": 0},
            "batcher": {"max_queue_delay_ms": 2, "max_batch_size": 32},
            "store": {"path": str(folder / "verdicts.sqlite")},
            "policy": {"signing_key": str(folder / "key"), "create_signing_key": True},
            "admin": {"enabled": False},
        }
    )
    service = CloudService(config)
    await service.start()
    try:
        work = []
        channels = []
        for n in range(streams):
            edge_id = f"gw-{n}"
            files: dict[str, Any] | None = None
            if tls:
                cert = ca.issue_edge(root / "edges", edge_id)
                files = {"ca_file": ca.cert_file, "cert_file": cert.cert_file, "key_file": cert.key_file}
            uplink = GrpcUplinkConfig.model_validate({"target": f"localhost:{service.port}", "tls": files})
            channel = open_channel(uplink)
            channels.append(channel)
            work.append((session_pb2_grpc.EdgeGLMStub(channel), edge_id, _samples(clip, edge_id, samples)))
        started = time.perf_counter()
        await asyncio.gather(*(_stream(stub, edge_id, batch) for stub, edge_id, batch in work))
        elapsed = time.perf_counter() - started
        for channel in channels:
            await channel.close(grace=None)
    finally:
        await service.stop()
    return streams * samples / elapsed


def main(
    out: Annotated[Path, typer.Option(help="Where the JSON results go.")] = Path("bench/results/tls.json"),
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of each (alternating).")] = 3,
    streams: Annotated[int, typer.Option(min=1, help="Session streams at once (one edge each).")] = 4,
    samples: Annotated[int, typer.Option(min=1, help="Samples per stream per round.")] = 150,
) -> None:
    """Samples/s over Session streams with and without mutual TLS, and their ratio."""
    rates: dict[str, list[float]] = {"plain": [], "tls": []}
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp, Progress() as progress:
        root = Path(tmp)
        FleetCA(root / "ca").create()
        clip = write_clip(
            ClipSpec(seed=4, seconds=3, fps=5, quiet_start_seconds=0.0, mean_gap_seconds=0.5), root / "clip"
        )
        task = progress.add_task("plain and TLS rounds", total=2 * rounds)
        for n in range(rounds):
            order = (False, True) if n % 2 == 0 else (True, False)
            for secure in order:
                rate = asyncio.run(_round(root, clip, secure, streams, samples, n))
                rates["tls" if secure else "plain"].append(round(rate, 1))
                progress.advance(task)
    plain, tls = statistics.median(rates["plain"]), statistics.median(rates["tls"])
    report = {
        "what": "samples/s through Session streams to one cloud (oracle backend, no delay), plain vs mutual TLS",
        "streams": streams,
        "samples_per_stream": samples,
        "rounds": rounds,
        "samples_per_s": rates,
        "median_plain": plain,
        "median_tls": tls,
        "tls_over_plain": round(tls / plain, 3),
        "machine": machine_facts(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    typer.echo(f"plain {plain:.0f} samples/s, TLS {tls:.0f} samples/s: TLS/plain {tls / plain:.3f} ({out})")


if __name__ == "__main__":
    typer.run(main)
