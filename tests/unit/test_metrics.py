"""Average precision: the numbers every accuracy claim of the project rests on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.eval.metrics import Box, DetectionEvaluator, average_precision, iou_matrix


def test_perfect_predictions_score_one() -> None:
    ev = DetectionEvaluator(2)
    truth = [Box(0, 0, 0, 10, 10), Box(1, 20, 20, 40, 40)]
    ev.add([Box(b.class_id, b.x1, b.y1, b.x2, b.y2, 0.9) for b in truth], truth)
    assert ev.summary() == pytest.approx((1.0, 1.0))


def test_no_predictions_score_zero_and_absent_class_is_nan() -> None:
    ev = DetectionEvaluator(3)
    ev.add([], [Box(0, 0, 0, 10, 10)])
    per_class = ev.per_class()
    assert per_class[0].ap50 == 0.0 and per_class[0].instances == 1
    assert math.isnan(per_class[2].ap50)
    assert ev.summary()[0] == 0.0


def test_wrong_class_is_a_false_positive() -> None:
    ev = DetectionEvaluator(2)
    ev.add([Box(1, 0, 0, 10, 10, 0.9)], [Box(0, 0, 0, 10, 10)])
    assert ev.summary()[0] == 0.0


def test_duplicate_detection_counts_once() -> None:
    ev = DetectionEvaluator(1)
    truth = [Box(0, 0, 0, 10, 10), Box(0, 50, 50, 60, 60)]
    # The duplicate outranks the second true positive: precision at full recall is 2/3.
    preds = [Box(0, 0, 0, 10, 10, 0.9), Box(0, 0, 0, 10, 10, 0.8), Box(0, 50, 50, 60, 60, 0.7)]
    ev.add(preds, truth)
    ap = ev.per_class()[0].ap50
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert ap == pytest.approx(expected)


def test_loose_box_counts_only_at_low_iou_thresholds() -> None:
    ev = DetectionEvaluator(1)
    # IoU = 60 / 100 = 0.6: a match at 0.50, 0.55 and 0.60, a miss from 0.65 up.
    ev.add([Box(0, 0, 0, 6, 10, 0.9)], [Box(0, 0, 0, 10, 10)])
    cls = ev.per_class()[0]
    assert cls.ap50 == pytest.approx(1.0)
    assert cls.ap50_95 == pytest.approx(0.3)


def test_average_precision_of_a_ranked_list() -> None:
    flags = np.array([True, False, True])
    ap = average_precision(flags, instances=2)
    # Recall reaches 0.5 at precision 1 and 1.0 at precision 2/3.
    assert ap == pytest.approx((51 * 1.0 + 50 * (2 / 3)) / 101)


def test_iou_matrix_matches_hand_computation() -> None:
    a = np.array([[0, 0, 10, 10]], dtype=np.float64)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], dtype=np.float64)
    assert iou_matrix(a, b).tolist() == [[pytest.approx(50 / 150), 0.0]]
    assert iou_matrix(a, np.zeros((0, 4))).shape == (1, 0)
