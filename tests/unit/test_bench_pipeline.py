"""The pipeline benchmark on a tiny model and a short clip: the report's shape and its CLI, never timings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from bench.pipeline import STAGES, app, benchmark
from tests.helpers.onnx_models import Candidate, save_yolo_model, v8_output

NAMES = {0: "person", 1: "cat", 2: "dog"}
STATS = ("fps", "ms_per_frame", "p50_ms", "p95_ms")
SHORT: dict[str, Any] = {"clip_seconds": 1.0, "fps": 5.0, "passes": 1, "batch": 2, "seconds": 0.1, "max_rounds": 1}


@pytest.fixture
def tiny_model(tmp_path):
    # Dynamic batch like the real edge model; one box in the uncertainty band so the miner has work.
    output = v8_output([Candidate(160, 160, 100, 60, 1, 0.4)], nc=3, anchors=16)
    return save_yolo_model(tmp_path / "tiny.onnx", output, NAMES, batch="batch")


def test_benchmark_reports_pipeline_raw_and_every_stage(tiny_model):
    report = benchmark(tiny_model, round_timeout_s=30.0, **SHORT)

    report = json.loads(json.dumps(report))  # JSON-ready as written by the CLI
    for side in ("pipeline", "raw", "raw_beside_decode"):
        assert all(report[side][stat] > 0 for stat in STATS), (side, report[side])
    assert report["ratio"] > 0
    assert report["ratio_round_median"] > 0
    assert report["ratio_to_raw_beside_decode"] > 0
    assert set(report["stages_ms_per_frame"]) == set(STAGES)
    stages = report["stages_ms_per_frame"]
    # encode is scaled to the share of frames the agent sent, which the resend interval may make zero.
    assert all(stages[name] > 0 for name in STAGES if name != "encode"), stages
    assert stages["encode"] >= 0
    assert report["encode_ms_per_image"] > 0
    assert report["agent"]["mean_batch_size"] > 0
    assert report["agent"]["frames_timed_per_round"] and all(n >= 5 for n in report["agent"]["frames_timed_per_round"])
    assert report["settings"]["clip"]["frames"] == 5
    assert report["settings"]["rounds"] == 1
    assert "changed_area_fraction=0.0" in report["settings"]["gate"]
    assert report["model"]["classes"] == 3


def test_cli_writes_the_json_report(tiny_model, tmp_path):
    out = tmp_path / "results" / "pipeline.json"
    args = ["--out", str(out), "--model", str(tiny_model), "--clip-seconds", "1", "--passes", "1", "--batch", "2"]

    result = CliRunner().invoke(app, [*args, "--seconds", "0.1", "--rounds", "1", "--round-timeout", "30"])

    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["pipeline"]["fps"] > 0
    assert report["raw"]["fps"] > 0


def test_cli_says_to_train_when_the_default_model_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no sim/models/edge.onnx here

    result = CliRunner().invoke(app, ["--out", str(tmp_path / "out.json")])

    assert result.exit_code == 2
    assert "make train" in result.output
    assert not (tmp_path / "out.json").exists()
