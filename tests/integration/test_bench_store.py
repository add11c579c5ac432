"""The store benchmark runs on SQLite and on a throwaway PostgreSQL and reports every figure, with the
ratios between them (never asserting what they are)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.store import benchmark
from tests.helpers.postgres import require_postgres


def test_store_benchmark_reports_both_engines_every_query_and_their_ratios(tmp_path: Path) -> None:
    require_postgres()
    report = asyncio.run(benchmark(tmp_path, rows=200, edges=3, repeats=2, concurrent=4))
    assert report["thumbnail_bytes_mean"] > 0
    for name in ("sqlite", "postgres"):
        figures = report[name]
        assert figures["put_with_meta_and_thumbnail_per_s"] > 0 and figures["concurrent_put_4_at_once_per_s"] > 0
        assert figures["bytes_per_verdict"] > 0
        assert set(figures["queries"]) >= {"newest_page_50", "page_50_behind_a_cursor_100_pages_deep", "one_thumbnail"}
        assert all(timing["median_ms"] > 0 for timing in figures["queries"].values())
    ratios = report["postgres_over_sqlite"]
    assert {"put_with_meta_and_thumbnail_per_s", "newest_page_50_median_ms"} <= set(ratios)
    assert all(ratio > 0 for ratio in ratios.values())
