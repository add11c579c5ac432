"""Detection metrics: average precision per class over IoU thresholds, COCO-style.

Written here rather than taken from pycocotools or ultralytics: the runtime environment carries
neither, and the computation is short. AP is the area under the interpolated precision-recall curve
sampled at 101 recall points, as COCO does; mAP50-95 averages IoU thresholds 0.50:0.05:0.95.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

IOU_THRESHOLDS: NDArray[np.float64] = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class Box:
    """A box with its class, and a score for predictions (1.0 for ground truth)."""

    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0


@dataclass
class ClassAP:
    """AP of one class at every IoU threshold, and how many ground-truth boxes it had."""

    ap: NDArray[np.float64]
    instances: int

    @property
    def ap50(self) -> float:
        """AP at IoU 0.5."""
        return float(self.ap[0])

    @property
    def ap50_95(self) -> float:
        """AP averaged over IoU 0.5 to 0.95."""
        return float(self.ap.mean())


@dataclass
class DetectionEvaluator:
    """Accumulates images, then reports AP per class."""

    num_classes: int
    _scores: list[list[float]] = field(default_factory=list)
    _matches: list[list[NDArray[np.bool_]]] = field(default_factory=list)
    _instances: NDArray[np.int64] = field(init=False)
    images: int = 0

    def __post_init__(self) -> None:
        self._scores = [[] for _ in range(self.num_classes)]
        self._matches = [[] for _ in range(self.num_classes)]
        self._instances = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, predictions: list[Box], truths: list[Box]) -> None:
        """Match one image's predictions to its ground truth, per class, greedily by score."""
        self.images += 1
        for cls in range(self.num_classes):
            gt = np.array([[b.x1, b.y1, b.x2, b.y2] for b in truths if b.class_id == cls], dtype=np.float64)
            preds = sorted((b for b in predictions if b.class_id == cls), key=lambda b: -b.score)
            self._instances[cls] += len(gt)
            if not preds:
                continue
            boxes = np.array([[b.x1, b.y1, b.x2, b.y2] for b in preds], dtype=np.float64)
            ious = iou_matrix(boxes, gt)
            matched = np.zeros((len(preds), len(IOU_THRESHOLDS)), dtype=bool)
            for t, threshold in enumerate(IOU_THRESHOLDS):
                taken = np.zeros(len(gt), dtype=bool)
                for p in range(len(preds)):
                    if len(gt) == 0:
                        break
                    candidates = np.where(~taken & (ious[p] >= threshold), ious[p], -1.0)
                    best = int(np.argmax(candidates))
                    if candidates[best] >= 0:
                        taken[best] = True
                        matched[p, t] = True
            self._scores[cls].extend(b.score for b in preds)
            self._matches[cls].append(matched)

    def per_class(self) -> list[ClassAP]:
        """AP of each class; a class with no ground truth gets NaN."""
        results = []
        for cls in range(self.num_classes):
            instances = int(self._instances[cls])
            if instances == 0:
                results.append(ClassAP(np.full(len(IOU_THRESHOLDS), np.nan), 0))
                continue
            if not self._scores[cls]:
                results.append(ClassAP(np.zeros(len(IOU_THRESHOLDS)), instances))
                continue
            order = np.argsort(-np.asarray(self._scores[cls]), kind="stable")
            matched = np.concatenate(self._matches[cls])[order]
            results.append(
                ClassAP(
                    np.array([average_precision(matched[:, t], instances) for t in range(len(IOU_THRESHOLDS))]),
                    instances,
                )
            )
        return results

    def summary(self) -> tuple[float, float]:
        """(mAP50, mAP50-95) over the classes that have ground truth."""
        present = [c for c in self.per_class() if c.instances > 0]
        if not present:
            return float("nan"), float("nan")
        return float(np.mean([c.ap50 for c in present])), float(np.mean([c.ap50_95 for c in present]))


def average_precision(true_positive: NDArray[np.bool_], instances: int) -> float:
    """COCO 101-point interpolated AP from score-sorted match flags."""
    tp = np.cumsum(true_positive)
    fp = np.cumsum(~true_positive)
    recall = tp / instances
    precision = tp / np.maximum(tp + fp, 1)
    # Make precision monotonically decreasing from right to left (the interpolated envelope).
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0.0, 1.0, 101)
    index = np.searchsorted(recall, points, side="left")
    sampled = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)
    return float(sampled.mean())


def iou_matrix(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """IoU of every box in `a` with every box in `b` (xyxy rows)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
