"""The closed-loop benchmark runs and reports the band per round and the costs (no timing asserted)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.closed_loop import convergence, observe_cost, plan_cost


def test_closed_loop_benchmark_reports_bands_and_costs(tmp_path: Path) -> None:
    report = convergence(seeds=2, rounds=3, per_round=2_000, window=4_000, rate=0.2)
    assert [len(run) for run in report["runs"]] == [4, 4]  # the start, then one entry per round
    assert report["start"]["upload"] > report["final_median"]["upload"]
    assert report["final_median"]["recall"] > 0.9
    assert asyncio.run(observe_cost(tmp_path, verdicts=200, rounds=2))["median_us"] > 0
    assert plan_cost(500, rounds=2)["pairs"] == 500
