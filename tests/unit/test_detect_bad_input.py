"""Bad images, frames and models are refused with an error naming the source or file."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from common.detect import Detector, DetectorConfig, DetectorError, ImageDecodeError, decode_image
from tests.helpers.onnx_models import Candidate, save_yolo_model, v8_output

NAMES = {0: "person", 1: "cat", 2: "dog"}
SOURCE = "cam-3/frame-000042.jpg"


def encoded(ext):
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[10:30, 20:40] = (0, 128, 255)
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def load(path):
    return Detector(DetectorConfig(model_path=path))


@pytest.fixture
def model_path(tmp_path):
    return save_yolo_model(tmp_path / "ok.onnx", v8_output([Candidate(50, 50, 10, 10, 0, 0.9)], nc=3), NAMES)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_decode_image_returns_a_bgr_frame(ext):
    frame = decode_image(encoded(ext), SOURCE)

    assert frame.shape == (48, 64, 3)
    assert frame.dtype == np.uint8
    assert abs(int(frame[20, 30, 2]) - 255) <= 8  # red stays in the last (BGR) channel


def test_decode_image_accepts_jpeg_padded_with_zeros_after_its_end_marker():
    assert decode_image(encoded(".jpg") + b"\x00" * 16, SOURCE).shape == (48, 64, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "cannot be decoded"),
        (encoded(".jpg")[: len(encoded(".jpg")) // 2], "truncated"),
        (encoded(".png")[: len(encoded(".png")) // 2], "truncated"),
        (b"\xff\xd8\xff" + b"\x17" * 100 + b"\xff\xd9", "cannot be decoded"),
    ],
    ids=["empty", "garbage", "truncated-jpeg", "truncated-png", "corrupt-jpeg"],
)
def test_bad_image_bytes_raise_image_decode_error_naming_the_source(data, reason):
    with pytest.raises(ImageDecodeError, match=re.escape(SOURCE)) as caught:
        decode_image(data, SOURCE)

    assert reason in str(caught.value)
    assert isinstance(caught.value, DetectorError)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (np.zeros((0, 0, 3), dtype=np.uint8), "non-empty"),
        (np.zeros((480, 0, 3), dtype=np.uint8), "non-empty"),
        (np.zeros((48, 64, 3), dtype=np.float32), "uint8"),
        (np.zeros((48, 64, 4), dtype=np.uint8), "3 channels"),
        (np.zeros((48, 64, 2), dtype=np.uint8), "3 channels"),
        (np.zeros((2, 48, 64, 3), dtype=np.uint8), "HxWx3"),
    ],
    ids=["zero-size", "zero-width", "float", "bgra", "two-channels", "4d"],
)
def test_detect_refuses_frames_that_are_not_bgr_images(model_path, frame, reason):
    with pytest.raises(DetectorError, match=r"frames\[0\]") as caught:
        load(model_path).detect(frame)

    assert reason in str(caught.value)


def test_detect_batch_names_the_bad_frame(model_path):
    frames = [np.zeros((48, 64, 3), dtype=np.uint8), np.zeros((48, 64, 3), dtype=np.int16)]

    with pytest.raises(DetectorError, match=r"frames\[1\].*uint8"):
        load(model_path).detect_batch(frames)


def test_model_whose_output_fits_no_yolo_layout_is_refused(tmp_path):
    five_classes = {i: f"class{i}" for i in range(5)}
    path = save_yolo_model(tmp_path / "model.onnx", np.zeros((1, 7, 10), np.float32), five_classes)

    with pytest.raises(DetectorError) as caught:
        load(path)

    message = str(caught.value)
    assert "model.onnx" in message
    assert "[1, 7, 10]" in message
    assert "nc=5" in message


def test_model_without_names_metadata_is_refused(tmp_path):
    path = save_yolo_model(tmp_path / "nameless.onnx", v8_output([], nc=3, anchors=4), None)

    with pytest.raises(DetectorError, match=r"nameless\.onnx: no 'names'"):
        load(path)


def test_model_for_another_task_is_refused(tmp_path):
    path = save_yolo_model(tmp_path / "seg.onnx", v8_output([], nc=3, anchors=4), NAMES, task="segment")

    with pytest.raises(DetectorError, match=r"seg\.onnx: task is 'segment'"):
        load(path)


def test_end2end_model_with_v8_output_is_refused(tmp_path):
    path = save_yolo_model(tmp_path / "e2e.onnx", v8_output([], nc=3, anchors=4), NAMES, end2end=True)

    with pytest.raises(DetectorError, match=r"e2e\.onnx: .*end-to-end.*\[1, 7, 4\]"):
        load(path)


def test_text_file_named_onnx_is_refused_naming_it(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_text("definitely not a protobuf\n")

    with pytest.raises(DetectorError, match=r"x\.onnx: not a loadable ONNX model"):
        load(path)


def test_missing_model_file_is_refused_naming_it(tmp_path):
    with pytest.raises(DetectorError, match=r"missing\.onnx: model file not found"):
        load(tmp_path / "missing.onnx")


def test_run_refuses_a_tensor_of_the_wrong_size(model_path):
    with pytest.raises(DetectorError, match=r"ok\.onnx: input tensor has shape \[1, 3, 640, 640\]"):
        load(model_path).run(np.zeros((1, 3, 640, 640), np.float32))


def claiming(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims another size; its pixels stay what they were."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[at + 9 :]


def test_a_decompression_bomb_is_refused_from_its_header_before_any_pixel_is_decoded():
    bomb = claiming(encoded(".jpg"), 30_000, 30_000)  # about 1 kB claiming 900 MP (2.7 GB decoded)
    assert len(bomb) < 2000
    with pytest.raises(ImageDecodeError, match=r"claims 30000x30000 pixels \(900\.0 MP\).*not decoded"):
        decode_image(bomb, SOURCE)
    with pytest.raises(ImageDecodeError, match="claims 64x48 pixels"):
        decode_image(encoded(".jpg"), SOURCE, max_pixels=1000)
    png = encoded(".png")
    huge_png = png[:16] + (30_000).to_bytes(4, "big") + (30_000).to_bytes(4, "big") + png[24:]
    with pytest.raises(ImageDecodeError, match="claims 30000x30000 pixels"):
        decode_image(huge_png, SOURCE)


def test_a_truncated_jpeg_with_an_end_marker_appended_is_refused():
    big = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8))[1].tobytes()
    forged = big[: len(big) // 2] + b"\xff\xd9"
    with pytest.raises(ImageDecodeError, match="premature end of data segment"):
        decode_image(forged, SOURCE)
    assert decode_image(big, SOURCE).shape == (240, 320, 3)
