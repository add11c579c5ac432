"""The glm benchmark on a random-weight GLM and a few requests: the report's shape and its CLI, never timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.glm import app
from tests.helpers.glm_models import save_random_glm

# torch on every core, under deadlines sized for one model at a time (tests/conftest.py).
pytestmark = pytest.mark.one_at_a_time("glm")


@pytest.mark.slow
def test_the_report_has_both_sides_and_their_ratio(tmp_path: Path) -> None:
    model = save_random_glm(tmp_path / "model")
    out = tmp_path / "results" / "glm.json"
    args = ["--out", str(out), "--model", str(model), "--batch", "2", "--concurrency", "2", "--requests", "2"]
    # Random weights never stop on their own: 8 new tokens keep each generate short.
    short = ["--burst-seconds", "5", "--rounds", "1", "--seconds", "1", "--max-new-tokens", "8"]
    result = CliRunner().invoke(app, [*args, *short])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["settings"]["concurrency"] == [1, 2]
    assert set(report["throughput_rps"]) == {"A", "B"}
    assert all(rps > 0 for rps in report["throughput_rps"].values())
    assert report["ratio_b_over_a"] == report["throughput_rps"]["B"] / report["throughput_rps"]["A"]
    assert report["rounds"] == 1 and report["samples"] > 0
    assert report["model"]["size_bytes"] == (model / "model.safetensors").stat().st_size
