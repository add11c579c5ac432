"""The detector benchmark on a tiny model: the report's shape and the CLI around it, never timings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.detector import app, benchmark, camera_frames
from tests.helpers.onnx_models import Candidate, save_yolo_model, v8_output

NAMES = {0: "person", 1: "cat", 2: "dog"}
STEPS = ("runtime", "raw")
STATS = ("fps", "ms_per_frame", "p50_ms", "p95_ms")


@pytest.fixture
def tiny_model(tmp_path):
    # Dynamic batch like the real edge model; one confident box so decode and NMS have work.
    output = v8_output([Candidate(160, 160, 100, 60, 1, 0.9)], nc=3, anchors=16)
    return save_yolo_model(tmp_path / "tiny.onnx", output, NAMES, batch="batch")


def test_benchmark_reports_runtime_and_raw_per_batch_size(tiny_model):
    report = benchmark(tiny_model, camera_frames(3), batch=2, seconds=0.2, max_rounds=2)

    report = json.loads(json.dumps(report))  # JSON-ready as written by the CLI
    assert set(report) == {"goal_ratio", "machine", "model", "settings", "configs"}
    assert set(report["configs"]) == {"batch_1", "batch_2"}
    for name, entry in report["configs"].items():
        assert name == f"batch_{entry['batch']}"
        for step in STEPS:
            assert all(entry[step][stat] > 0 for stat in STATS), (name, step, entry[step])
        assert entry["ratio"] > 0
        assert entry["ratio_round_median"] > 0
        overhead = entry["overhead_ms_per_frame"]
        assert set(overhead) == {"total", "preprocess", "postprocess", "rest"}
        assert overhead["preprocess"] > 0
        assert overhead["postprocess"] > 0
    # The tracker's cost per detected frame stands next to the detector's, at batch 1 (the agent's path).
    tracker = report["configs"]["batch_1"]["tracker"]
    assert all(tracker[stat] > 0 for stat in STATS)
    assert report["configs"]["batch_1"]["tracker_to_runtime"] > 0
    assert "tracker" not in report["configs"]["batch_2"]
    assert 1 <= report["settings"]["rounds"] <= 2
    assert report["settings"]["frames"] == 3
    assert report["settings"]["frame_shape"] == [480, 640, 3]
    assert report["machine"]["cpu_count"] >= 1
    assert report["machine"]["provider"] == "CPUExecutionProvider"
    assert report["machine"]["onnxruntime"]
    assert report["model"]["size_bytes"] == tiny_model.stat().st_size
    assert report["model"]["classes"] == 3


def test_fixed_batch_model_is_measured_at_its_own_batch_only(tmp_path):
    output = v8_output([Candidate(160, 160, 100, 60, 1, 0.9)], nc=3, anchors=16)
    model = save_yolo_model(tmp_path / "fixed.onnx", output, NAMES, batch=1)

    report = benchmark(model, camera_frames(2), batch=8, seconds=0.1, max_rounds=1)

    assert list(report["configs"]) == ["batch_1"]


def test_cli_writes_the_json_report(tiny_model, tmp_path):
    out = tmp_path / "results" / "detector.json"

    args = ["--out", str(out), "--model", str(tiny_model), "--frames", "2", "--batch", "2"]
    result = CliRunner().invoke(app, [*args, "--seconds", "0.1", "--rounds", "1"])

    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["configs"]["batch_2"]["runtime"]["fps"] > 0
    assert np.isfinite(report["configs"]["batch_2"]["ratio"])


def test_cli_says_to_train_when_the_default_model_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no sim/models/edge.onnx here

    result = CliRunner().invoke(app, ["--out", str(tmp_path / "out.json")])

    assert result.exit_code == 2
    assert "make train" in result.output
    assert not (tmp_path / "out.json").exists()
