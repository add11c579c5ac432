"""The cloud store's write rate with metadata and thumbnails, and the latency of the admin API's queries,
on SQLite and on PostgreSQL side by side.

Run as ``python -m bench.store --out bench/results/store.json`` (``make bench``). Each engine gets a
fresh store: a SQLite file (WAL, synchronous=NORMAL), and a database on a throwaway cluster of
Debian's PostgreSQL on loopback (`bench.postgres`) with synchronous_commit=off, the same promise as
SQLite's NORMAL (a power cut may lose the last commits, never corrupts). Each store gets `rows`
verdicts from `edges` edges over a day, each with its sample's metadata and a thumbnail of a 640x480
frame, written one after another (`put_..._per_s`), then `concurrent` more at once from as many
tasks (`concurrent_put_..._per_s`: the ingest's shape); then each query the dashboard makes is
timed `repeats` times (median and max reported, since the machine is shared): the newest page,
filtered pages, a page deep behind a cursor, a thumbnail, and both series over the day in 60 s
buckets. Ratios postgres/sqlite are written next to the figures. Without PostgreSQL installed only
SQLite is measured, and the file says so.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from bench.postgres import MISSING, postgres_bin, postgres_server
from cloud.store import EdgeDetectionSummary, SampleMeta, VerdictFilter, VerdictStore, make_thumbnail
from cloud.store.db import Conn
from cloud.store.pg import PgPool
from protos import sample_pb2, verdict_pb2

app = typer.Typer(add_completion=False)
LABELS = ("person", "car", "dog", "bicycle")
DAY_S = 86_400.0


def frame(seed: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """A 640x480 BGR frame with structure and noise (a thumbnail of it compresses like a camera's)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, 640, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 25, (480, 640, 3)).astype(np.float32)
    return np.asarray(np.clip(ramp + noise + 30, 0, 255), dtype=np.uint8)


def verdict(sample_id: str, i: int) -> bytes:
    """A backend verdict with one label and a sentence of text."""
    label = LABELS[i % len(LABELS)]
    return verdict_pb2.Verdict(
        sample_id=sample_id,
        decision=(verdict_pb2.DECISION_CONFIRMED, verdict_pb2.DECISION_REJECTED, verdict_pb2.DECISION_UNSURE)[i % 3],
        detections=[sample_pb2.Detection(label=label, score=0.8)],
        text=f"a {label} near the entrance, partly hidden by a parked van",
        confidence=0.8,
        backend="glm",
        model_name="glm-4v",
        model_version="bench",
        origin=verdict_pb2.VERDICT_ORIGIN_BACKEND,
    ).SerializeToString()


async def timed(repeats: int, query: Callable[[], Awaitable[object]]) -> dict[str, float]:
    """Median and max milliseconds of `repeats` runs of `query`."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await query()
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(times), "max_ms": max(times)}


def sample_meta(i: int, at: float, thumbnails: list[bytes]) -> SampleMeta:
    """The metadata of the i-th verdict."""
    return SampleMeta(
        camera_id=f"cam{i % 2}",
        frame_seq=i,
        captured_at=at - 0.2,
        mined_reason="uncertainty_band",
        edge_detections=(EdgeDetectionSummary(LABELS[(i + 1) % len(LABELS)], 0.5),),
        policy_version=1,
        uplink_bytes=40_000 + i % 1000,
        thumbnail_jpeg=thumbnails[i % len(thumbnails)],
    )


async def engine(
    store: VerdictStore, rows: int, edges: int, repeats: int, concurrent: int, thumbnails: list[bytes]
) -> dict[str, Any]:
    """Fill one fresh store, then time each query."""
    await store.open()
    now = time.time()

    async def put(i: int) -> None:
        at = now - DAY_S + i * DAY_S / rows
        sample_id = f"s-{i:08d}"
        await store.put(
            sample_id, f"edge-{i % edges}", verdict(sample_id, i), received_at=at, decided_at=at + 0.1,
            meta=sample_meta(i, at, thumbnails),
        )  # fmt: skip

    started = time.perf_counter()
    for i in range(rows):
        await put(i)
    put_rate = rows / (time.perf_counter() - started)
    extra = rows // 4
    started = time.perf_counter()
    for first in range(rows, rows + extra, concurrent):
        await asyncio.gather(*(put(i) for i in range(first, min(first + concurrent, rows + extra))))
    concurrent_rate = extra / (time.perf_counter() - started)
    rows += extra
    deep = None
    for _ in range(min(100, rows // 50)):
        deep = (await store.list_verdicts(limit=50, cursor=deep)).next_cursor
    queries = {
        "newest_page_50": lambda: store.list_verdicts(limit=50),
        "page_50_of_one_edge": lambda: store.list_verdicts(VerdictFilter(edge_id="edge-1"), limit=50),
        "page_50_by_label_and_decision": lambda: store.list_verdicts(
            VerdictFilter(label="dog", decision="rejected"), limit=50
        ),
        "page_50_behind_a_cursor_100_pages_deep": lambda: store.list_verdicts(limit=50, cursor=deep),
        "one_thumbnail": lambda: store.get_thumbnail(f"s-{rows // 2:08d}", f"edge-{(rows // 2) % edges}"),
        "uplink_series_day_60s": lambda: store.uplink_series(60.0, now - DAY_S, now),
        "decision_series_day_60s": lambda: store.decision_series(60.0, now - DAY_S, now),
    }
    timings = {name: await timed(repeats, query) for name, query in queries.items()}
    size = await store.database.run("size", _size)
    await store.close()
    return {
        "put_with_meta_and_thumbnail_per_s": put_rate,
        f"concurrent_put_{concurrent}_at_once_per_s": concurrent_rate,
        "bytes_per_verdict": size / rows,
        "queries": timings,
    }


def _size(conn: Conn) -> int:
    """Bytes the store's database takes (SQLite: pages in use; PostgreSQL: the database, indexes included)."""
    if conn.dialect == "sqlite":
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])
    return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


def _ratios(sqlite: dict[str, Any], postgres: dict[str, Any]) -> dict[str, float]:
    """postgres / sqlite for every figure both have (rates: higher is better; times: lower)."""
    figures = [key for key, value in sqlite.items() if isinstance(value, float | int) and value]
    ratios = {key: postgres[key] / sqlite[key] for key in figures}
    for name, timing in sqlite["queries"].items():
        ratios[f"{name}_median_ms"] = postgres["queries"][name]["median_ms"] / timing["median_ms"]
    return ratios


async def benchmark(folder: Path, rows: int, edges: int, repeats: int, concurrent: int) -> dict[str, Any]:
    """Both engines, one after the other, on the same rows."""
    frames = [frame(seed) for seed in range(8)]
    make_thumbnail(frames[0])  # the codec's first call sets itself up: not timed
    started = time.perf_counter()
    thumbnails = [make_thumbnail(image) for image in frames]
    thumbnail_ms = (time.perf_counter() - started) * 1000 / len(thumbnails)
    report: dict[str, Any] = {
        "machine": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "load_average": list(os.getloadavg()),
        },
        "settings": {"rows": rows, "edges": edges, "repeats": repeats, "concurrent": concurrent, "span_s": DAY_S},
        "thumbnail_ms_per_640x480_frame": thumbnail_ms,
        "thumbnail_bytes_mean": statistics.mean(len(t) for t in thumbnails),
    }
    lite = VerdictStore(folder / "verdicts.sqlite")
    report["sqlite"] = await engine(lite, rows, edges, repeats, concurrent, thumbnails)
    if postgres_bin() is None:
        report["postgres"] = {"skipped": MISSING}
        return report
    with postgres_server({"fsync": "on", "synchronous_commit": "off"}) as server:
        pool = PgPool(server.new_dsn(), "verdict store", max_size=concurrent)
        report["postgres"] = await engine(VerdictStore(database=pool), rows, edges, repeats, concurrent, thumbnails)
        report["machine"]["postgresql"] = server.bin.parent.name
    report["postgres_over_sqlite"] = _ratios(report["sqlite"], report["postgres"])
    return report


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/store.json"),
    rows: Annotated[int, typer.Option(min=100, max=2_000_000, help="Verdicts in the store.")] = 20_000,
    edges: Annotated[int, typer.Option(min=1, max=10_000, help="Edges they come from.")] = 10,
    repeats: Annotated[int, typer.Option(min=1, max=1_000, help="Runs of each query.")] = 20,
    concurrent: Annotated[int, typer.Option(min=1, max=64, help="Puts at once in the concurrent phase.")] = 8,
    folder: Annotated[Path | None, typer.Option(help="Disk folder for the SQLite file (default: a temp dir).")] = None,
) -> None:
    """Measure the verdict store's write rates and the admin API's query latencies on SQLite and PostgreSQL."""
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(dir=folder) as temp, console.status(f"store: {rows} verdicts per engine"):
        report = asyncio.run(benchmark(Path(temp), rows, edges, repeats, concurrent))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for name in ("sqlite", "postgres"):
        figures = report[name]
        if "skipped" in figures:
            console.print(f"store {name}: skipped ({figures['skipped']})")
            continue
        q = figures["queries"]
        console.print(
            f"store {name}: {figures['put_with_meta_and_thumbnail_per_s']:.0f} puts/s one at a time, "
            f"{figures[f'concurrent_put_{concurrent}_at_once_per_s']:.0f}/s {concurrent} at once, "
            f"{figures['bytes_per_verdict']:.0f} B/verdict; newest page {q['newest_page_50']['median_ms']:.1f} ms, "
            f"deep page {q['page_50_behind_a_cursor_100_pages_deep']['median_ms']:.1f} ms, "
            f"uplink series {q['uplink_series_day_60s']['median_ms']:.1f} ms"
        )
    console.print(f"written to {out}")


if __name__ == "__main__":
    app()
