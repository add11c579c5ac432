"""The Detector on real (tiny) ONNX models: metadata, box mapping, both layouts, batching."""

from __future__ import annotations

import numpy as np
import pytest

from common.detect import Detection, Detector, DetectorConfig
from tests.helpers.onnx_models import Candidate, e2e_output, save_yolo_model, v8_output

NAMES = {0: "person", 1: "cat", 2: "dog"}


def detector(path, **config):
    return Detector(DetectorConfig(model_path=path, **config))


def frame(height, width, value=0):
    return np.full((height, width, 3), value, dtype=np.uint8)


@pytest.fixture
def v8_model(tmp_path):
    # A 100x60 box centred at (160, 160) of the 320x320 input, class "cat".
    output = v8_output([Candidate(160, 160, 100, 60, 1, 0.9)], nc=3, anchors=8)
    return save_yolo_model(tmp_path / "v8.onnx", output, NAMES)


def test_detector_reads_names_input_size_and_layout_from_the_model(v8_model):
    det = detector(v8_model)

    assert det.names == NAMES
    assert det.input_size == (320, 320)
    assert det.layout == "v8"
    assert det.dynamic_batch is False
    assert det.provider == "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("frame_hw", "expected_box"),
    [
        # landscape 640x480: ratio 0.5, 40 px bars above and below
        ((480, 640), (220, 180, 420, 300)),
        # portrait 480x640: ratio 0.5, 40 px bars left and right
        ((640, 480), (140, 260, 340, 380)),
        # 1920x1080: ratio 1/6, resized 320x180, 70 px bars above and below
        ((1080, 1920), (660, 360, 1260, 720)),
    ],
)
def test_v8_box_lands_at_its_position_in_the_original_frame(v8_model, frame_hw, expected_box):
    (found,) = detector(v8_model).detect(frame(*frame_hw))

    assert found.label == "cat"
    assert found.class_id == 1
    assert found.score == pytest.approx(0.9)
    np.testing.assert_allclose(found.box, expected_box, atol=1.0)


def test_v8_model_output_goes_through_threshold_and_class_aware_nms(tmp_path):
    output = v8_output(
        [
            Candidate(100, 100, 60, 60, 0, 0.9),
            Candidate(102, 100, 60, 60, 0, 0.8),  # same class, overlapping: suppressed
            Candidate(100, 102, 60, 60, 2, 0.7),  # another class at the same place: kept
            Candidate(250, 250, 40, 40, 1, 0.1),  # below conf_threshold
        ],
        nc=3,
    )
    path = save_yolo_model(tmp_path / "nms.onnx", output, NAMES)

    found = detector(path).detect(frame(320, 320))

    assert [(d.label, round(d.score, 2)) for d in found] == [("person", 0.9), ("dog", 0.7)]


def test_max_det_caps_detections_per_frame(tmp_path):
    candidates = [Candidate(20 + 30 * i, 100, 20, 20, 0, 0.5 + 0.04 * i) for i in range(10)]
    path = save_yolo_model(tmp_path / "many.onnx", v8_output(candidates, nc=3), NAMES)

    found = detector(path, max_det=4).detect(frame(320, 320))

    assert [round(d.score, 2) for d in found] == [0.86, 0.82, 0.78, 0.74]


def test_e2e_model_boxes_are_thresholded_and_mapped_back(tmp_path):
    output = e2e_output([(110, 130, 210, 190, 0.8, 2), (0, 0, 10, 10, 0.05, 0)] + [(0, 0, 0, 0, 0.0, 0)] * 6)
    path = save_yolo_model(tmp_path / "e2e.onnx", output, NAMES, end2end=True)
    det = detector(path)

    found = det.detect(frame(480, 640))

    assert det.layout == "e2e"
    assert [(d.label, d.class_id) for d in found] == [("dog", 2)]
    np.testing.assert_allclose(found[0].box, (220, 180, 420, 300), atol=1.0)


def test_detections_are_frozen_plain_python_values(v8_model):
    (found,) = detector(v8_model).detect(frame(320, 320))

    assert isinstance(found, Detection)
    assert all(type(v) is float for v in found.box)
    assert type(found.score) is float
    assert type(found.class_id) is int
    with pytest.raises(AttributeError):
        found.score = 1.0  # type: ignore[misc]


def _brightness_model(tmp_path, batch):
    # Candidate 0 scores 0.1 + 0.8 * mean pixel, so bright frames find a person and dark ones not;
    # candidate 1 always finds a cat.
    output = v8_output([Candidate(100, 100, 40, 40, 0, 0.1), Candidate(200, 200, 60, 30, 1, 0.6)], nc=3)
    gain = np.zeros_like(output)
    gain[0, 4 + 0, 0] = 0.8
    return save_yolo_model(tmp_path / f"bright_{batch}.onnx", output, NAMES, batch=batch, gain=gain)


# Bright, dark (grey bars included in the mean), bright with wide bars, dark filling the input.
FRAMES = [frame(480, 640, 250), frame(640, 480, 0), frame(100, 333, 250), frame(300, 300, 30)]


@pytest.mark.parametrize("batch", ["batch", 1, 3], ids=["dynamic", "static-1", "static-3"])
def test_detect_batch_matches_frame_by_frame_detection(tmp_path, batch):
    det = detector(_brightness_model(tmp_path, batch))

    batched = det.detect_batch(FRAMES)

    assert det.dynamic_batch is (batch == "batch")
    assert batched == [det.detect(f) for f in FRAMES]
    # frames really differ: bright ones see a person, dark ones only the cat
    assert [sorted(d.label for d in found) for found in batched] == [
        ["cat", "person"],
        ["cat"],
        ["cat", "person"],
        ["cat"],
    ]


def test_preprocess_run_postprocess_gives_detect_batch_results(tmp_path):
    det = detector(_brightness_model(tmp_path, "batch"))

    tensor, params = det.preprocess(FRAMES)
    raw = det.run(tensor)
    found = det.postprocess(raw, params, [f.shape for f in FRAMES])

    assert tensor.shape == (4, 3, 320, 320)
    assert raw.shape == (4, 7, 2)
    assert found == det.detect_batch(FRAMES)


def test_input_size_comes_from_imgsz_when_height_and_width_are_dynamic(tmp_path):
    output = v8_output([Candidate(208, 128, 100, 60, 0, 0.9)], nc=3)
    path = save_yolo_model(
        tmp_path / "dyn.onnx", output, NAMES, batch="batch", input_hw=("height", "width"), imgsz=(256, 416)
    )
    det = detector(path)

    (found,) = det.detect(frame(480, 640))

    assert det.input_size == (256, 416)
    # 640x480 into 416x256: resized to 341x256, 37 px bar on the left; the candidate's corners
    # (158, 98) and (258, 158) map to x = (158 - 37) * 640 / 341, y = 98 * 480 / 256, ...
    np.testing.assert_allclose(found.box, (227.10, 183.75, 414.78, 296.25), atol=1.0)


def test_grey_frames_are_detected_like_their_bgr_version(v8_model):
    det = detector(v8_model)
    grey = np.full((480, 640), 90, dtype=np.uint8)

    assert det.detect(grey) == det.detect(np.dstack([grey, grey, grey]))


def test_detect_batch_of_no_frames_is_empty(v8_model):
    assert detector(v8_model).detect_batch([]) == []
