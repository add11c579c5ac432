"""The store benchmark runs and reports every figure (never asserting what they are)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.store import benchmark


def test_store_benchmark_reports_the_write_rate_and_every_query(tmp_path: Path) -> None:
    report = asyncio.run(benchmark(tmp_path, rows=200, edges=3, repeats=2))
    assert report["put_with_meta_and_thumbnail_per_s"] > 0
    assert report["thumbnail_bytes_mean"] > 0 and report["file_bytes_per_verdict"] > 0
    assert set(report["queries"]) >= {"newest_page_50", "page_50_behind_a_cursor_100_pages_deep", "one_thumbnail"}
    assert all(timing["median_ms"] > 0 for timing in report["queries"].values())
