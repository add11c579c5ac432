"""The committed detectors, scored on the world's test split through the edge runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sim.cli import app
from sim.demo import run_demo
from sim.eval.detector import ensure_dataset, evaluate
from sim.world.photos import CLASSES

MODELS = Path(__file__).resolve().parents[2] / "sim" / "models"
runner = CliRunner()


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default-seed test split, generated once into a private cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEGLM_CACHE_DIR", str(cache))
        return ensure_dataset(None, seed=0, split="test")


@pytest.mark.slow
def test_eval_detector_writes_the_metrics_json(test_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "edge.json"
    args = ["eval-detector", str(MODELS / "edge.onnx"), "--split", "test", "--json", str(out)]
    result = runner.invoke(app, [*args, "--data", str(test_split), "--limit", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["images"] == 16
    assert 0.0 < report["map50_95"] <= report["map50"] <= 1.0
    assert set(report["per_class"]) <= set(CLASSES)
    assert {"hard", "easy", "small", "occluded", "dark", "blur"} <= set(report["subsets"])


@pytest.mark.slow
def test_eval_detector_generates_the_split_when_no_data_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEGLM_CACHE_DIR", str(tmp_path))
    folder = ensure_dataset(None, seed=11, split="val")
    assert len(list((folder / "images" / "val").glob("*.jpg"))) == 200
    assert not (folder / "images" / "train").exists()


@pytest.mark.slow
def test_committed_edge_model_reaches_map50_of_0_6(test_split: Path) -> None:
    result = evaluate(MODELS / "edge.onnx", test_split, "test")
    map50, _ = result.overall.summary()
    assert result.overall.images == 200
    assert map50 >= 0.6


@pytest.mark.slow
def test_reference_model_beats_edge_model_on_hard_cases(test_split: Path) -> None:
    edge_hard = evaluate(MODELS / "edge.onnx", test_split, "test").hard.summary()[0]
    reference_hard = evaluate(MODELS / "reference.onnx", test_split, "test").hard.summary()[0]
    assert reference_hard >= edge_hard + 0.05


def test_demo_prints_found_against_truth(tmp_path: Path) -> None:
    console = Console(record=True, width=160)
    run_demo(tmp_path, MODELS / "edge.onnx", images=6, seed=99, console=console)
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert len(summary["images"]) == 6
    assert summary["tp"] + summary["miss"] > 0
    assert 0.0 <= summary["precision"] <= 1.0 and 0.0 <= summary["recall"] <= 1.0
    assert "precision" in console.export_text()
    assert len(list((tmp_path / "annotated").glob("*.jpg"))) == 6
