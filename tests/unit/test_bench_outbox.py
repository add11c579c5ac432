"""The outbox benchmark runs and reports both rates (never asserting what they are)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.outbox import benchmark


def test_outbox_benchmark_reports_write_and_replay_rates(tmp_path: Path) -> None:
    report = asyncio.run(benchmark(tmp_path, samples=20, image_bytes=2_000, rounds=2, batch=4))
    assert report["write_samples_per_s"]["median"] > 0
    assert report["replay_samples_per_s"]["median"] > 0
    assert report["settings"]["samples_per_round"] == 20
    assert not list(tmp_path.glob("*.sqlite")), "each round cleans its file up"
