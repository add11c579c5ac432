"""The cloud benchmark on a tiny model and a few requests: the report's shape and its CLI, never timings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from bench.cloud import app, benchmark
from tests.helpers.onnx_models import Candidate, save_yolo_model, v8_output

NAMES = {0: "person", 1: "cat", 2: "motorcycle", 3: "cup", 4: "rocket"}
SHORT: dict[str, Any] = {
    "samples": 2,
    "concurrency": (1, 2),
    "batch": 2,
    "queue_delay_ms": 1.0,
    "requests": 2,
    "burst_seconds": 1.0,
    "oracle_delay_ms": 1.0,
    "max_rounds": 1,
    "seconds": 0.1,
    # Far above any latency here, so which level is best does not depend on the machine's speed.
    "bound_ms": 60_000.0,
}


@pytest.fixture
def tiny_model(tmp_path):
    # Dynamic batch like the reference model, so B can send batches of two.
    output = v8_output([Candidate(160, 160, 100, 60, 1, 0.9)], nc=5, anchors=16)
    return save_yolo_model(tmp_path / "tiny.onnx", output, NAMES, batch="batch")


def test_benchmark_reports_both_configs_on_both_backends(tiny_model):
    report = benchmark(tiny_model, **SHORT)

    report = json.loads(json.dumps(report))  # JSON-ready as written by the CLI
    assert set(report["backends"]) == {"onnx", "oracle"}
    for name, entry in report["backends"].items():
        assert entry["label"]
        assert entry["bound_ms"] > 0
        assert set(entry["configs"]) == {"A", "B"}
        for config, side in entry["configs"].items():
            assert [level["concurrency"] for level in side["levels"]] == [1, 2]
            for level in side["levels"]:
                assert level["failures"] == 0
                assert level["requests"] > 0
                for key in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch_size", "mean_inference_ms"):
                    assert level[key] > 0, (name, config, key, level)
            assert side["best_under_bound"] is not None
            assert side["peak_rps_any_latency"] > 0
        assert side["batcher"]["max_batch_size"] == 2
        assert entry["ratio_b_over_a"] > 0
        assert entry["ratio_b_over_a_peak"] > 0
    assert report["backends"]["onnx"]["model"]["size_bytes"] == tiny_model.stat().st_size
    assert report["backends"]["oracle"]["delay_ms_per_batch"] == 1.0
    assert report["settings"]["concurrency"] == [1, 2]


def test_concurrency_one_is_always_measured_and_sets_the_default_bound(tiny_model):
    report = benchmark(tiny_model, **{**SHORT, "concurrency": (2,), "bound_ms": None})

    oracle = report["backends"]["oracle"]
    levels = oracle["configs"]["A"]["levels"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    assert oracle["bound_rule"] == "2 x p99 of A at concurrency 1"
    assert oracle["bound_ms"] == 2 * levels[0]["p99_ms"]


def test_cli_writes_the_json_report(tiny_model, tmp_path):
    out = tmp_path / "results" / "cloud.json"
    args = ["--out", str(out), "--model", str(tiny_model), "--samples", "2", "--concurrency", "1", "--batch", "2"]

    options = ["--requests", "2", "--oracle-delay-ms", "1", "--rounds", "1", "--bound-ms", "60000"]
    result = CliRunner().invoke(app, [*args, *options])

    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["backends"]["onnx"]["configs"]["B"]["levels"][0]["throughput_rps"] > 0
    assert report["backends"]["oracle"]["ratio_b_over_a"] > 0


def test_cli_says_to_train_when_the_default_model_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no sim/models/reference.onnx here

    result = CliRunner().invoke(app, ["--out", str(tmp_path / "out.json")])

    assert result.exit_code == 2
    assert "make train" in result.output
    assert not (tmp_path / "out.json").exists()
