"""Decode raw YOLO outputs into boxes, vectorised with numpy; NMS by OpenCV.

Two layouts are produced by ultralytics' ONNX export:

* ``v8`` (YOLOv8/YOLO11 heads): ``[4 + nc, N]`` per image, rows cx, cy, w, h in input pixels then
  ``nc`` class scores that already went through a sigmoid. Needs thresholding and NMS.
* ``e2e`` (end-to-end heads, or ``nms=True`` exports): ``[N, 6]`` per image, x1, y1, x2, y2, score,
  class id in input pixels, already suppressed. Needs thresholding only.

RT-DETR (``RTDETRDecoder`` head) gives a third: ``[Q, 4 + nc]`` per image, one row per query, cx, cy,
w, h *normalised* to the input then ``nc`` sigmoid class scores. A DETR's queries do not duplicate
one another, so like ultralytics' RTDETRPredictor it takes the best class per query, thresholds, and
runs no NMS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

import cv2
import numpy as np
from numpy.typing import NDArray

# Like ultralytics' max_nms: only the best-scoring candidates enter NMS, which bounds its cost on
# a frame full of low-quality boxes.
MAX_NMS_CANDIDATES = 30_000


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object: xyxy box in original-frame pixels, score, class id and its name."""

    box: tuple[float, float, float, float]
    score: float
    class_id: int
    label: str


class Boxes(NamedTuple):
    """Decoded boxes of one image as parallel arrays, best score first."""

    xyxy: NDArray[np.float32]
    scores: NDArray[np.float32]
    class_ids: NDArray[np.int64]


def empty_boxes() -> Boxes:
    """Boxes of an image with nothing detected."""
    return Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def decode_v8(pred: NDArray[np.float32], conf_threshold: float, iou_threshold: float, max_det: int) -> Boxes:
    """Decode one image's ``[4 + nc, N]`` output: best class per candidate, threshold, class-aware NMS."""
    class_scores = pred[4:]
    # The best score of every candidate, but the class (argmax) only of the few kept ones.
    scores = class_scores.max(axis=0)
    keep = scores >= conf_threshold
    if not keep.any():
        return empty_boxes()
    centre_wh = pred[:4, keep].T.astype(np.float32)
    scores = scores[keep].astype(np.float32)
    class_ids = class_scores[:, keep].argmax(axis=0).astype(np.int64)

    xyxy = np.empty_like(centre_wh)
    xyxy[:, :2] = centre_wh[:, :2] - centre_wh[:, 2:] / 2
    xyxy[:, 2:] = centre_wh[:, :2] + centre_wh[:, 2:] / 2

    order = _class_aware_nms(xyxy, scores, class_ids, iou_threshold)[:max_det]
    return Boxes(xyxy[order], scores[order], class_ids[order])


def _class_aware_nms(
    xyxy: NDArray[np.float32], scores: NDArray[np.float32], class_ids: NDArray[np.int64], iou_threshold: float
) -> NDArray[np.intp]:
    """Indices kept by per-class NMS, best score first.

    Each class is shifted to its own region of the plane so one NMS call never lets a box suppress a
    box of another class. The shift is computed here rather than by cv2.dnn.NMSBoxesBatched, whose
    offset assumes non-negative coordinates; YOLO boxes at the frame border often start below 0.
    """
    corners = xyxy.astype(np.float64)
    span = float(corners.max() - corners.min()) + 1.0
    shifted = corners + (class_ids.astype(np.float64) * span)[:, None]
    # cv2 NMS takes x, y, w, h boxes.
    shifted[:, 2:] -= shifted[:, :2]
    # score_threshold 0: the caller already applied conf_threshold (cv2 asserts a threshold >= 0).
    # top_k bounds the candidates *before* NMS in OpenCV, so it is the max_nms cap, not max_det.
    # The binding takes numpy arrays as they are; its stub only knows sequences, hence the casts.
    kept = cv2.dnn.NMSBoxes(
        cast("Sequence[Sequence[float]]", shifted),
        cast("Sequence[float]", scores),
        0.0,
        iou_threshold,
        top_k=MAX_NMS_CANDIDATES,
    )
    return np.asarray(kept, dtype=np.intp).reshape(-1)


def decode_e2e(pred: NDArray[np.float32], conf_threshold: float, max_det: int) -> Boxes:
    """Decode one image's ``[N, 6]`` end-to-end output: the model already ran NMS, keep by score."""
    rows = pred[pred[:, 4] >= conf_threshold]
    # ultralytics' top-k output is sorted already; a stable sort keeps that order and makes
    # "best first" (and so the max_det cut) hold for any other exporter too.
    rows = rows[np.argsort(-rows[:, 4], kind="stable")][:max_det]
    return Boxes(
        rows[:, :4].astype(np.float32),
        rows[:, 4].astype(np.float32),
        np.rint(rows[:, 5]).astype(np.int64),
    )


def decode_rtdetr(pred: NDArray[np.float32], input_hw: tuple[int, int], conf_threshold: float, max_det: int) -> Boxes:
    """Decode one image's ``[Q, 4 + nc]`` RT-DETR output into input-pixel boxes, best score first."""
    class_scores = pred[:, 4:]
    scores = class_scores.max(axis=1)
    keep = np.flatnonzero(scores >= conf_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_det]
    input_h, input_w = input_hw
    centre_wh = pred[keep, :4].astype(np.float32) * np.array([input_w, input_h, input_w, input_h], np.float32)
    xyxy = np.empty_like(centre_wh)
    xyxy[:, :2] = centre_wh[:, :2] - centre_wh[:, 2:] / 2
    xyxy[:, 2:] = centre_wh[:, :2] + centre_wh[:, 2:] / 2
    return Boxes(xyxy, scores[keep].astype(np.float32), class_scores[keep].argmax(axis=1).astype(np.int64))


def to_detections(xyxy: NDArray[np.float32], boxes: Boxes, names: dict[int, str]) -> list[Detection]:
    """Build Detection objects from frame-space ``xyxy`` and the scores and classes of ``boxes``."""
    return [
        Detection(
            box=(x1, y1, x2, y2),
            score=score,
            class_id=class_id,
            label=names.get(class_id, str(class_id)),
        )
        for (x1, y1, x2, y2), score, class_id in zip(
            xyxy.tolist(), boxes.scores.tolist(), boxes.class_ids.tolist(), strict=True
        )
    ]
