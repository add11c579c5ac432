"""The outbox's sustained write and replay rates, with its SQLite file on disk.

Run as ``python -m bench.outbox --out bench/results/outbox.json`` (``make bench``). Write = `put` of
camera-sized samples one after the other (each durable when it returns: WAL, synchronous=FULL).
Replay = what the dispatcher does after an outage: `next_batch` in replay order, then `remove` each.
Rounds alternate and the medians are reported, since the machine is shared.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from edge.outbox import Outbox
from protos import sample_pb2

app = typer.Typer(add_completion=False)


def make_samples(count: int, image_bytes: int, prefix: str) -> list[sample_pb2.Sample]:
    """Samples the size of a full-frame JPEG at the uplink's quality."""
    payload = bytes(range(256)) * (image_bytes // 256 + 1)
    return [
        sample_pb2.Sample(
            sample_id=f"{prefix}-{i}",
            edge_id="bench",
            camera_id="cam0",
            priority=(i % 100) / 100,
            image=sample_pb2.SampleImage(jpeg=payload[:image_bytes]),
        )
        for i in range(count)
    ]


async def one_round(folder: Path, samples: list[sample_pb2.Sample], batch: int) -> tuple[float, float]:
    """(write samples/s, replay samples/s) on a fresh outbox file."""
    path = folder / f"outbox-{time.monotonic_ns()}.sqlite"
    outbox = Outbox(path, max_bytes=1 << 34, max_age_s=86_400)
    await outbox.open()
    started = time.perf_counter()
    for sample in samples:
        await outbox.put(sample)
    write = len(samples) / (time.perf_counter() - started)
    started = time.perf_counter()
    replayed = 0
    while True:
        chunk = await outbox.next_batch(batch, "oldest_first")
        if not chunk:
            break
        for item in chunk:
            await outbox.remove(item.sample_id)
        replayed += len(chunk)
    replay = replayed / (time.perf_counter() - started)
    await outbox.close()
    await asyncio.to_thread(remove_files, folder, path.name)
    return write, replay


def remove_files(folder: Path, name: str) -> None:
    """The round's database and its WAL/SHM companions."""
    for leftover in folder.glob(f"{name}*"):
        leftover.unlink()


async def benchmark(folder: Path, samples: int, image_bytes: int, rounds: int, batch: int) -> dict[str, Any]:
    """Every round on the same folder; medians and spreads of both rates."""
    writes, replays = [], []
    for index in range(rounds):
        write, replay = await one_round(folder, make_samples(samples, image_bytes, f"r{index}"), batch)
        writes.append(write)
        replays.append(replay)
    return {
        "machine": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "load_average": list(os.getloadavg()),
        },
        "settings": {
            "samples_per_round": samples,
            "image_bytes": image_bytes,
            "rounds": rounds,
            "replay_batch": batch,
            "folder": str(folder),
            "durability": "SQLite WAL, synchronous=FULL: each put is on disk when it returns",
        },
        "write_samples_per_s": {"median": statistics.median(writes), "min": min(writes), "max": max(writes)},
        "replay_samples_per_s": {"median": statistics.median(replays), "min": min(replays), "max": max(replays)},
        "write_mb_per_s_median": statistics.median(writes) * image_bytes / 1e6,
    }


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/outbox.json"),
    samples: Annotated[int, typer.Option(min=10, max=100_000, help="Samples written then replayed per round.")] = 500,
    image_bytes: Annotated[int, typer.Option(min=1_000, max=2_000_000, help="JPEG bytes per sample.")] = 60_000,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Rounds; medians are reported.")] = 3,
    batch: Annotated[int, typer.Option(min=1, max=1_000, help="Samples per replay batch.")] = 16,
    folder: Annotated[Path | None, typer.Option(help="Disk folder for the SQLite file (default: a temp dir).")] = None,
) -> None:
    """Measure how fast the edge outbox stores samples durably and replays them after an outage."""
    console = Console(stderr=True)
    status = console.status(f"outbox: {rounds} rounds of {samples} samples of {image_bytes} bytes")
    with tempfile.TemporaryDirectory(dir=folder) as temp, status:
        report = asyncio.run(benchmark(Path(temp), samples, image_bytes, rounds, batch))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    console.print(
        f"outbox write {report['write_samples_per_s']['median']:.0f} samples/s "
        f"({report['write_mb_per_s_median']:.1f} MB/s), replay {report['replay_samples_per_s']['median']:.0f} "
        f"samples/s; written to {out}"
    )


if __name__ == "__main__":
    app()
