"""Decoding raw YOLO outputs: class choice, thresholds, class-aware NMS, max_det, e2e layout."""

from __future__ import annotations

import numpy as np

from common.detect.decode import decode_e2e, decode_rtdetr, decode_v8
from tests.helpers.onnx_models import Candidate, e2e_output, rtdetr_output, v8_output


def decode(candidates, nc=3, conf=0.25, iou=0.7, max_det=300):
    return decode_v8(v8_output(candidates, nc)[0], conf, iou, max_det)


def test_v8_decode_takes_the_best_class_of_each_candidate():
    pred = v8_output([Candidate(100, 100, 20, 20, 0, 0.3)], nc=3)[0]
    pred[4 + 2, 0] = 0.8

    boxes = decode_v8(pred, 0.25, 0.7, 300)

    assert boxes.class_ids.tolist() == [2]
    np.testing.assert_allclose(boxes.scores, [0.8])
    np.testing.assert_allclose(boxes.xyxy, [[90, 90, 110, 110]])


def test_v8_decode_keeps_scores_at_or_above_the_threshold():
    boxes = decode(
        [
            Candidate(50, 50, 10, 10, 0, 0.24),
            Candidate(150, 50, 10, 10, 0, 0.25),
            Candidate(250, 50, 10, 10, 1, 0.9),
        ]
    )

    np.testing.assert_allclose(boxes.scores, [0.9, 0.25])


def test_v8_decode_returns_nothing_when_no_score_reaches_the_threshold():
    boxes = decode([Candidate(50, 50, 10, 10, 0, 0.1)])

    assert boxes.xyxy.shape == (0, 4)
    assert len(boxes.scores) == len(boxes.class_ids) == 0


def test_nms_suppresses_overlapping_boxes_of_the_same_class_only():
    boxes = decode(
        [
            Candidate(100, 100, 50, 50, 0, 0.9),
            Candidate(102, 101, 50, 50, 0, 0.8),  # same class, IoU ~0.9: suppressed
            Candidate(101, 100, 50, 50, 1, 0.7),  # other class, same place: kept
        ]
    )

    assert boxes.class_ids.tolist() == [0, 1]
    np.testing.assert_allclose(boxes.scores, [0.9, 0.7])


def test_nms_keeps_same_class_boxes_that_overlap_less_than_the_iou_threshold():
    boxes = decode([Candidate(100, 100, 40, 40, 0, 0.9), Candidate(120, 100, 40, 40, 0, 0.8)])  # IoU 1/3

    assert len(boxes.scores) == 2


def test_nms_keeps_classes_apart_even_with_negative_coordinates():
    # OpenCV's NMSBoxesBatched offsets classes by max coordinate + 1, which would lay the class-1
    # box, shifted, exactly over the class-0 one.
    boxes = decode([Candidate(95, 95, 10, 10, 0, 0.9), Candidate(-6, -6, 10, 10, 1, 0.8)])

    assert sorted(boxes.class_ids.tolist()) == [0, 1]


def test_v8_decode_keeps_the_max_det_best_boxes():
    candidates = [Candidate(20 + 30 * i, 50, 10, 10, i % 3, 0.3 + 0.05 * i) for i in range(10)]

    boxes = decode(candidates, max_det=3)

    np.testing.assert_allclose(boxes.scores, [0.75, 0.70, 0.65])


def test_e2e_decode_thresholds_and_keeps_boxes_as_given():
    pred = e2e_output(
        [
            (10, 20, 30, 40, 0.9, 1),
            (12, 22, 32, 42, 0.85, 1),  # overlapping: the model's NMS kept it, so do we
            (50, 60, 70, 80, 0.2, 0),
            (0, 0, 0, 0, 0.0, 0),
        ]
    )[0]

    boxes = decode_e2e(pred, 0.25, 300)

    np.testing.assert_allclose(boxes.xyxy, [[10, 20, 30, 40], [12, 22, 32, 42]])
    np.testing.assert_allclose(boxes.scores, [0.9, 0.85])
    assert boxes.class_ids.tolist() == [1, 1]
    assert boxes.class_ids.dtype == np.int64


def test_e2e_decode_keeps_the_max_det_best_boxes():
    pred = e2e_output([(i, i, i + 5, i + 5, 0.3 + 0.1 * (i % 5), i) for i in range(5)])[0]

    boxes = decode_e2e(pred, 0.25, 2)

    np.testing.assert_allclose(boxes.scores, [0.7, 0.6])
    assert boxes.class_ids.tolist() == [4, 3]


def test_rtdetr_decode_scales_normalised_centres_to_input_pixels_best_first():
    pred = rtdetr_output(
        [(0.5, 0.25, 0.5, 0.25, 2, 0.6), (0.1, 0.1, 0.1, 0.1, 0, 0.9), (0.9, 0.9, 0.1, 0.1, 1, 0.2)], nc=3
    )[0]

    boxes = decode_rtdetr(pred, (320, 640), conf_threshold=0.25, max_det=300)

    assert boxes.class_ids.tolist() == [0, 2]
    np.testing.assert_allclose(boxes.scores, [0.9, 0.6])
    # (cx, cy, w, h) x (640, 320, 640, 320) -> xyxy in input pixels
    np.testing.assert_allclose(boxes.xyxy, [[32, 16, 96, 48], [160, 40, 480, 120]], atol=1e-4)


def test_rtdetr_decode_keeps_max_det_and_finds_nothing_below_threshold():
    pred = rtdetr_output([(0.5, 0.5, 0.1, 0.1, 0, 0.3 + 0.05 * i) for i in range(5)], nc=3, num_queries=10)[0]

    np.testing.assert_allclose(decode_rtdetr(pred, (320, 320), 0.25, max_det=2).scores, [0.5, 0.45], rtol=1e-6)
    assert len(decode_rtdetr(pred, (320, 320), 0.95, max_det=300).scores) == 0
