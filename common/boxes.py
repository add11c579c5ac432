"""Axis-aligned xyxy boxes in pixels: the one home of their area, intersection, IoU and padded union."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


# The union of the boxes a sample shows grows by this share of its width (height) on each side, for context.
CROP_PADDING = 0.25


def padded_union(
    frame_size: tuple[int, int], boxes: Sequence[Box], padding: float = CROP_PADDING
) -> tuple[int, int, int, int] | None:
    """Union of the boxes, padded and clipped to the frame, in pixels; None when that is the whole frame or nothing.

    The edge crops its samples with this rule and the cloud uses it to focus a full frame on the
    boxes the edge claims, so both sides show a model the same region.
    """
    width, height = frame_size
    if not boxes:
        return None
    x1 = min(b[0] for b in boxes)
    y1 = min(b[1] for b in boxes)
    x2 = max(b[2] for b in boxes)
    y2 = max(b[3] for b in boxes)
    pad_x, pad_y = (x2 - x1) * padding, (y2 - y1) * padding
    left = max(0, math.floor(x1 - pad_x))
    top = max(0, math.floor(y1 - pad_y))
    right = min(width, math.ceil(x2 + pad_x))
    bottom = min(height, math.ceil(y2 + pad_y))
    if right <= left or bottom <= top or (left, top, right, bottom) == (0, 0, width, height):
        return None
    return left, top, right, bottom
