"""The three command lines, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cloud.cli import app as cloud_app
from edge.cli import app as edge_app
from protos import sample_pb2

EDGE_MODEL = Path(__file__).resolve().parents[2] / "sim" / "models" / "edge.onnx"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics_edge"
runner = CliRunner()


@pytest.mark.parametrize("module", ["edge.cli", "cloud.cli", "sim.cli"])
def test_every_program_explains_itself(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"from {module} import app; app()", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "EdgeGLM" in result.stdout
    assert "Commands" in result.stdout


def test_edge_detect_reports_bad_image_and_still_detects_the_good_one(tmp_path: Path) -> None:
    good = sorted(FIXTURES.glob("*.jpg"))[0]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    result = runner.invoke(edge_app, ["detect", "--model", str(EDGE_MODEL), str(corrupt), str(good)])
    assert result.exit_code == 1
    assert "corrupt.jpg" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(good)]
    assert all({"label", "score", "box"} <= set(d) for d in lines[0]["detections"])


def test_edge_detect_refuses_a_model_that_is_not_yolo(tmp_path: Path) -> None:
    image = tmp_path / "frame.jpg"
    cv2.imwrite(str(image), np.zeros((48, 64, 3), np.uint8))
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("not a model")
    result = runner.invoke(edge_app, ["detect", "--model", str(bogus), str(image)])
    assert result.exit_code == 2
    assert "bogus.onnx" in result.stderr


def test_cloud_decode_prints_a_sample_as_json(tmp_path: Path) -> None:
    sample = sample_pb2.Sample(sample_id="s-1", edge_id="gw-7", camera_id="cam0")
    path = tmp_path / "sample.bin"
    path.write_bytes(sample.SerializeToString())
    result = runner.invoke(cloud_app, ["decode", str(path), "--kind", "sample"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sample_id"] == "s-1"


def test_cloud_decode_names_the_file_it_cannot_parse(tmp_path: Path) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\xff\xff\xff\xff")
    result = runner.invoke(cloud_app, ["decode", str(path)])
    assert result.exit_code == 1
    assert "garbage.bin" in result.stderr
