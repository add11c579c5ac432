"""Model updates on a real loop: download throughput over the gRPC uplink and the time to swap a model in.

Run as ``python -m bench.models --out bench/results/models.json`` (``make bench``). One cloud service
(grpc.aio on loopback, model registry) and one edge agent reading a generated clip as fast as it
detects; each round publishes a new variant of the committed edge model (same graph, other bytes),
names it in the fleet policy and waits until the agent runs it, then names the previous one again (a
rollback: no download). Rounds alternate two FetchModel piece sizes, so both are measured side by
side on the same machine state.

Per round: the download's time and throughput, the whole update (download, hash, signature, fresh
ONNX Runtime session, self-test, swap), the rollback, and the agent's detection rate while the
update ran against the rate in the same span before it (1.0: the update cost detection nothing).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from cloud.config import CloudConfig
from cloud.models.registry import ModelRegistry, PublishedModel
from cloud.policy import load_private_key, write_keypair
from cloud.service import CloudService
from common.manifest import describe_model
from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from edge.status import counter_total
from sim.world.clips import ClipSpec, write_clip
from tests.helpers.model_files import variant

app = typer.Typer(add_completion=False)
MODEL = Path(__file__).resolve().parents[1] / "sim" / "models" / "edge.onnx"
NAME = "yolo-edge"
WAIT_S = 120.0


def cloud_config(folder: Path, clip: Path, chunk_bytes: int, registry: Path, key: Path) -> CloudConfig:
    """A cloud (its store under `folder`) serving `registry` in pieces of `chunk_bytes`, signing with `key`."""
    return CloudConfig.model_validate(
        {
            "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5},
            "backend": {"kind": "oracle", "ground_truth": {"cam0": str(clip)}, "delay_ms": 1, "jitter_ms": 0},
            "store": {"path": str(folder / "cloud" / "verdicts.sqlite")},
            "policy": {"signing_key": str(key)},
            "admin": {"enabled": False},
            "models": {"registry": str(registry), "chunk_bytes": chunk_bytes},
        }
    )


def edge_config(folder: Path, clip: Path, port: int, public_key: Path) -> EdgeConfig:
    silent = {"uncertainty_band_enabled": False, "watch_list": [], "random_audit_enabled": False}
    silent["motion_without_detection_enabled"] = False
    return EdgeConfig.model_validate(
        {
            "edge_id": "bench-edge",
            "state_dir": str(folder / "edge"),
            "cameras": [{"id": "cam0", "url": str(clip / "frames"), "realtime": False, "loop": True}],
            "detector": {"model_path": str(MODEL), "intra_op_threads": 1},
            "uplink": {"target": f"127.0.0.1:{port}", "heartbeat_interval_s": 0.5},
            "policy": {"public_key": str(public_key), "initial": {"mining": silent}},
            "health": {"host": "127.0.0.1", "port": 0},
        }
    )


async def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench.models: no {what} within {WAIT_S:g} s")
        await asyncio.sleep(0.01)


async def one_round(
    service: CloudService, agent: EdgeAgent, new: PublishedModel, old: PublishedModel | None
) -> dict[str, float]:
    """Name `new`, wait until it runs; then name `old` again (kept on disk) and wait for it."""
    assert service.policy is not None
    detected = agent.metrics.frames_detected
    before_count, before_at = counter_total(detected), time.monotonic()
    await asyncio.sleep(0.5)
    rate_before = (counter_total(detected) - before_count) / (time.monotonic() - before_at)
    start_count, started = counter_total(detected), time.monotonic()
    await service.policy.set_fleet_model(new.ref(), "bench")
    await wait_for(lambda: agent.models.running.sha256 == new.manifest.sha256, "swap to the new model")
    update_s = time.monotonic() - started
    rate_during = (counter_total(detected) - start_count) / update_s
    download_s = agent.metrics.model_download_seconds._value.get()
    result = {
        "update_s": update_s,
        "swap_metric_s": agent.metrics.model_swap_seconds._value.get(),
        "download_s": download_s,
        "download_mb_per_s": new.manifest.size_bytes / 1e6 / max(download_s, 1e-9),
        "detection_rate_during_over_before": rate_during / max(rate_before, 1e-9),
    }
    if old is not None:
        started = time.monotonic()
        await service.policy.set_fleet_model(old.ref(), "bench rollback")
        await wait_for(lambda: agent.models.running.sha256 == old.manifest.sha256, "rollback")
        result["rollback_s"] = time.monotonic() - started
    return result


async def benchmark(folder: Path, rounds: int, chunks: list[int]) -> dict[str, Any]:
    """One cloud and one agent per piece size, all running all along; rounds alternate between them."""
    clip = write_clip(ClipSpec(seed=0, seconds=8, fps=5, quiet_start_seconds=0.5, mean_gap_seconds=1.5), folder / "c")
    private, public = write_keypair(folder / "keys")
    key = load_private_key(private)
    registry = ModelRegistry(folder / "registry")
    base = variant(folder / "v0.onnx", "v0")
    start = registry.publish(base, describe_model(base, name=NAME, version="0"), key)
    by_chunk: dict[int, list[dict[str, float]]] = {chunk: [] for chunk in chunks}
    loops: dict[int, tuple[CloudService, EdgeAgent, asyncio.Task[None]]] = {}
    stop = asyncio.Event()
    try:
        for chunk in chunks:
            where = folder / f"piece-{chunk}"
            service = CloudService(cloud_config(where, clip, chunk, registry.root, private))
            await service.start()
            agent = EdgeAgent(edge_config(where, clip, service.port, public))
            loops[chunk] = (service, agent, asyncio.create_task(agent.run(stop)))
            await wait_for(lambda a=agent: counter_total(a.metrics.frames_detected) > 0, "detection")
            await one_round(service, agent, start, None)  # every agent starts on v0 (a fetched model)
        with Progress(console=Console(stderr=True), transient=True) as progress:
            bar = progress.add_task("model updates", total=rounds * len(chunks))
            for index in range(rounds * len(chunks)):
                chunk = chunks[index % len(chunks)]
                service, agent, _ = loops[chunk]
                path = variant(folder / f"v{index + 1}.onnx", f"v{index + 1}")
                new = registry.publish(path, describe_model(path, name=NAME, version=str(index + 1)), key)
                by_chunk[chunk].append(await one_round(service, agent, new, start))
                progress.advance(bar)
    finally:
        stop.set()
        for service, _, task in loops.values():
            await asyncio.wait_for(task, WAIT_S)
            await service.stop()

    def medians(results: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.median(r[key] for r in results) for key in results[0]}

    summary = {f"{chunk // 1024}KiB": medians(results) for chunk, results in by_chunk.items()}
    first, last = (f"{chunk // 1024}KiB" for chunk in (chunks[0], chunks[-1]))
    return {
        "machine": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": list(os.getloadavg()),
        },
        "settings": {
            "model_bytes": MODEL.stat().st_size,
            "rounds_per_piece_size": rounds,
            "piece_bytes": chunks,
            "link": "loopback gRPC, plaintext",
            "edge": "one agent, one camera, lossless clip replay as fast as it detects (the CPU is busy)",
        },
        "medians_by_piece_size": summary,
        "rounds": {f"{chunk // 1024}KiB": results for chunk, results in by_chunk.items()},
        "download_throughput_ratio": summary[last]["download_mb_per_s"] / summary[first]["download_mb_per_s"],
        "rollback_over_update": summary[first]["rollback_s"] / summary[first]["update_s"],
    }


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/models.json"),
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Updates per piece size; medians are reported.")] = 3,
) -> None:
    """Measure model download throughput and swap time on a real cloud and agent over loopback."""
    console = Console(stderr=True)
    chunks = [64 * 1024, 1024 * 1024]
    with tempfile.TemporaryDirectory() as temp:
        report = asyncio.run(benchmark(Path(temp), rounds, chunks))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    big = report["medians_by_piece_size"]["1024KiB"]
    console.print(
        f"model update {big['update_s']:.2f} s (download {big['download_mb_per_s']:.0f} MB/s with 1 MiB pieces, "
        f"{report['download_throughput_ratio']:.2f}x the 64 KiB pieces), rollback from disk {big['rollback_s']:.2f} s, "
        f"detection rate during an update {big['detection_rate_during_over_before']:.2f}x of before; written to {out}"
    )


if __name__ == "__main__":
    app()
