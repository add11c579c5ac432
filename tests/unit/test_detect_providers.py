"""Execution provider choice: preference order, fallback to CPU, and the log lines saying so."""

from __future__ import annotations

import logging

import onnxruntime as ort
import pytest

from common.detect import Detector, DetectorConfig
from common.detect.providers import fallback_message, session_providers
from tests.helpers.onnx_models import save_yolo_model, v8_output

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

needs_cpu_only_build = pytest.mark.skipif(
    CUDA in ort.get_available_providers(), reason="needs an onnxruntime build without CUDA"
)


@pytest.fixture
def model_path(tmp_path):
    return save_yolo_model(tmp_path / "model.onnx", v8_output([], nc=2, anchors=4), {0: "a", 1: "b"})


@needs_cpu_only_build
def test_asking_for_cuda_on_a_cpu_build_falls_back_to_cpu_with_one_warning(model_path, caplog):
    caplog.set_level(logging.INFO, logger="common.detect")

    det = Detector(DetectorConfig(model_path=model_path, providers=["cuda", "cpu"]))

    assert det.provider == CPU
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'cuda' (CUDAExecutionProvider) is not available" in warnings[0]
    assert f"falling back to {CPU}" in warnings[0]
    assert CPU in warnings[0].split("available", 2)[2]  # the list of what this build has
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(f"detector on {CPU}" in m and "model.onnx" in m for m in infos)


def test_asking_for_cpu_logs_the_pick_and_no_fallback(model_path, caplog):
    caplog.set_level(logging.INFO, logger="common.detect")

    det = Detector(DetectorConfig(model_path=model_path, providers=["cpu"], intra_op_threads=1))

    assert det.provider == CPU
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"detector on {CPU}" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        (["cuda", "cpu"], [CPU], [CPU]),
        (["cuda"], [CPU], [CPU]),
        (["openvino", "cuda", "cpu"], [CUDA, CPU], [CUDA, CPU]),
        (["cuda", "openvino"], [OPENVINO, CUDA, CPU], [CUDA, OPENVINO, CPU]),
        (["cpu", "cuda"], [CUDA, CPU], [CPU, CUDA]),
    ],
)
def test_session_providers_keep_preference_order_and_end_with_cpu(requested, available, expected):
    assert session_providers(requested, available) == expected


def test_no_fallback_message_when_the_preferred_provider_runs():
    assert fallback_message("m.onnx", ["cuda", "cpu"], [CUDA, CPU], CUDA) is None


def test_fallback_message_says_when_an_available_provider_failed_to_start():
    message = fallback_message("m.onnx", ["cuda", "cpu"], [CUDA, CPU], CPU)

    assert message is not None
    assert message.startswith("m.onnx: execution provider 'cuda' (CUDAExecutionProvider) failed to start")
    assert message.endswith(f"falling back to {CPU}")
