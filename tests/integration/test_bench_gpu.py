"""bench.gpu (`make gpu-check`): it says plainly when there is no GPU, refuses a part that fell back to the
CPU, and its measuring code runs (on the CPU, `--device cpu`) to a report with every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.detector import camera_frames
from bench.gpu import DeviceNotUsedError, detector_figures, missing_cuda

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu", *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


def test_without_a_gpu_the_check_is_skipped_saying_why_and_writes_nothing(tmp_path: Path) -> None:
    if missing_cuda() is None:
        pytest.skip("this machine has a CUDA device: the check runs for real (make gpu-check)")
    done = run("--out", str(tmp_path / "gpu.json"))
    assert done.returncode == 0, done.stderr
    assert "gpu-check skipped: no CUDA device here" in done.stderr and "CUDAExecutionProvider" in done.stderr
    assert not (tmp_path / "gpu.json").exists()


def test_a_detector_that_falls_back_to_the_cpu_is_an_error() -> None:
    if missing_cuda() is None:
        pytest.skip("this machine has a CUDA device: there is no fallback to provoke")
    with pytest.raises(DeviceNotUsedError, match="runs on CPUExecutionProvider, not CUDAExecutionProvider"):
        detector_figures(REPO / "sim" / "models" / "edge.onnx", "cuda", camera_frames(2), 2, 1)


def test_the_same_measurements_on_the_cpu_give_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = run("--device", "cpu", "--samples", "2", "--frames", "2", "--rounds", "1", "--batch", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["glm"]["dtype"] == "float32"
    for part, unit in (("glm", "ms_per_sample"), ("edge", "ms_per_frame"), ("reference", "ms_per_frame")):
        assert set(report[part][unit]) == {"1", "2"} and all(v > 0 for v in report[part][unit].values()), part
        assert report[part]["speedup"] > 0
    assert report["edge"]["provider"] == report["reference"]["provider"] == "CPUExecutionProvider"
