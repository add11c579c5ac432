"""What durable delivery costs: samples/s through the real agent -> cloud path, kept until the verdict
(today's contract) against deleted on the ack (the contract before issue 11), side by side.

Each run is a real edge agent on a generated clip (every detected frame is mined) and a real cloud
service (oracle backend, SQLite store) on loopback, over gRPC and over MQTT (Debian's mosquitto).
"ack" swaps in a dispatcher that forgets a sample on its accepted Ack, as the agent used to: it is
here only to show the figure the durability is paid against. Runs are interleaved round by round,
so a shared machine's drift falls on both modes alike.

Run as ``python -m bench.delivery --out bench/results/delivery.json`` (``make bench``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress

from bench.detector import DEFAULT_MODEL
from cloud.config import CloudConfig
from cloud.service import CloudService
from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from edge.uplink.dispatch import Dispatcher
from protos import session_pb2
from sim.fleet.broker import HOST, start_mosquitto
from sim.world.clips import ClipSpec, write_clip

app = typer.Typer(add_completion=False)
Transport = Literal["grpc", "mqtt"]
Mode = Literal["verdict", "ack"]
WATCH_ALL = ["person", "cat", "motorcycle", "cup", "rocket"]
UNLIMITED = {"budget_bytes_per_s": 1 << 30, "burst_bytes": 1 << 30}


class AckDeletesDispatcher(Dispatcher):
    """The contract before issue 11: an accepted Ack frees the sample (outbox row and window slot)."""

    async def on_ack(self, ack: session_pb2.Ack) -> None:
        if ack.accepted:
            await self.on_verdict(ack.sample_id)
            return
        await super().on_ack(ack)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _cloud_config(folder: Path, clip: Path, mqtt_port: int | None) -> CloudConfig:
    return CloudConfig.model_validate(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "backend": {"kind": "oracle", "ground_truth": {"cam0": str(clip)}, "delay_ms": 2, "jitter_ms": 0},
            "batcher": {"max_queue_delay_ms": 2},
            "store": {"path": str(folder / "verdicts.sqlite")},
            "admin": {"enabled": False},
            "mqtt": {"enabled": mqtt_port is not None, "host": HOST, "port": mqtt_port or 1883},
        }
    )


def _edge_config(folder: Path, clip: Path, grpc_port: int, mqtt_port: int | None) -> EdgeConfig:
    uplink: dict[str, Any] = {"target": f"127.0.0.1:{grpc_port}"}
    if mqtt_port is not None:
        uplink = {"kind": "mqtt", "host": HOST, "port": mqtt_port}
    mining = {"watch_list": WATCH_ALL, "resend_interval_s": 0.0, "random_audit_enabled": False}
    return EdgeConfig.model_validate(
        {
            "edge_id": "gw-bench",
            "state_dir": str(folder / "edge"),
            "cameras": [{"id": "cam0", "url": str(clip / "frames"), "realtime": False, "loop": False}],
            "detector": {"model_path": str(DEFAULT_MODEL), "intra_op_threads": 1},
            "uplink": uplink,
            "policy": {
                "initial": {"mining": mining, "uplink": {"budget_bytes_per_s": 1 << 30, "burst_bytes": 1 << 30}}
            },
            "health": {"host": "127.0.0.1", "port": 0},
            "pipeline": {"drain_deadline_s": 120, "autonomous_ready": True},
        }
    )


async def _one_run(
    folder: Path, clip: Path, transport: Transport, mode: Mode, mqtt_port: int | None
) -> dict[str, float]:
    service = CloudService(_cloud_config(folder, clip, mqtt_port if transport == "mqtt" else None))
    await service.start()
    try:
        agent = EdgeAgent(_edge_config(folder, clip, service.port, mqtt_port if transport == "mqtt" else None))
        if mode == "ack":
            old = agent.dispatcher
            agent.dispatcher = AckDeletesDispatcher(
                agent.outbox, agent.uplink, agent.policy.uplink, agent.metrics, window=agent.config.outbox.window
            )
            del old
        started = time.perf_counter()
        await asyncio.wait_for(agent.run(asyncio.Event()), 600)
        seconds = time.perf_counter() - started
        judged = await service.store.count()
    finally:
        await service.stop()
    summary = json.loads((folder / "edge" / "summary.json").read_text())
    return {"seconds": seconds, "judged": float(judged), "mined": float(summary["samples_mined"])}


@contextmanager
def _broker(folder: Path) -> Iterator[int]:
    port = _free_port()
    process = start_mosquitto(folder, port)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/delivery.json"),
    rounds: Annotated[int, typer.Option(min=1, max=10, help="Interleaved rounds; medians are reported.")] = 3,
    seconds: Annotated[float, typer.Option(min=2, max=120, help="Length of the clip (5 fps).")] = 12.0,
) -> None:
    """Samples/s agent -> cloud with samples kept until their verdict, next to deleting them on the ack."""
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    runs: dict[str, list[dict[str, float]]] = {}
    order: list[tuple[Transport, Mode]] = [(t, m) for t in ("grpc", "mqtt") for m in ("verdict", "ack")]
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp, Progress(console=console) as progress:
        root = Path(tmp)
        clip = write_clip(
            ClipSpec(seed=5, seconds=seconds, fps=5, quiet_start_seconds=0.2, mean_gap_seconds=1.0), root / "clip"
        )
        task = progress.add_task("delivery runs", total=rounds * len(order))
        with _broker(root / "broker") as mqtt_port:
            for n in range(rounds):
                for transport, mode in order if n % 2 == 0 else list(reversed(order)):
                    folder = root / f"run-{n}-{transport}-{mode}"
                    outcome = asyncio.run(_one_run(folder, clip, transport, mode, mqtt_port))
                    runs.setdefault(f"{transport}/{mode}", []).append(outcome)
                    progress.advance(task)
    figures: dict[str, Any] = {}
    for key, results in runs.items():
        rates = [r["judged"] / r["seconds"] for r in results]
        figures[key] = {
            "samples_per_s": float(np.median(rates)),
            "samples_judged": [r["judged"] for r in results],
            "samples_mined": [r["mined"] for r in results],
            "lost": [r["mined"] - r["judged"] for r in results],
        }
    for transport in ("grpc", "mqtt"):
        kept, acked = figures[f"{transport}/verdict"], figures[f"{transport}/ack"]
        figures[f"{transport}/ratio_verdict_to_ack"] = kept["samples_per_s"] / acked["samples_per_s"]
    result: dict[str, Any] = {
        "what": "samples/s judged end to end (agent run incl. detection of every frame), median of interleaved rounds",
        "rounds": rounds,
        "clip_seconds": seconds,
        "figures": figures,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for key, value in figures.items():
        console.print(f"{key}: {value if isinstance(value, float) else value['samples_per_s']:.3f}")
    console.print(f"written to {out}")


if __name__ == "__main__":
    app()
