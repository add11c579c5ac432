"""Axis-aligned xyxy boxes in pixels: the one home of their area, intersection and IoU."""

from __future__ import annotations

Box = tuple[float, float, float, float]


def area(box: Box) -> float:
    """Width times height; 0 for an empty or inverted box."""
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def intersection(a: Box, b: Box) -> float:
    """Area the two boxes share."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, width) * max(0.0, height)


def iou(a: Box, b: Box) -> float:
    """Intersection over union (0 when both are empty)."""
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0
