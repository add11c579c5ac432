"""The decision rule shared by the detector-like backends (onnx, oracle).

A sample is *confirmed* when the backend finds an object of a label the edge reported, overlapping
the edge's box (IoU >= `match_iou`) or, when the sample is a crop, anywhere in the crop; when the
edge reported nothing (motion without detection), any object confirms. Otherwise it is *rejected*.
Such backends are never unsure about what they see; "unsure" comes only from errors and timeouts.
"""

from __future__ import annotations

from collections.abc import Sequence

from cloud.convert import BackendResult, Box, CloudDetection, CropBox, SampleInput
from common.boxes import area, intersection, iou


def share_inside(box: Box, region: CropBox) -> float:
    """The share (0-1) of `box`'s area that lies inside `region`."""
    own = area(box)
    if own <= 0:
        return 0.0
    return intersection(box, (float(region.x1), float(region.y1), float(region.x2), float(region.y2))) / own


def judge(sample: SampleInput, found: Sequence[CloudDetection], match_iou: float) -> BackendResult:
    """Apply the decision rule to what a backend `found` (original-frame pixels) in `sample`."""
    reported = sample.detections
    if not reported:
        return _judge_motion(found)
    wanted = {d.label for d in reported}
    matches: list[tuple[CloudDetection, CloudDetection | None]]
    if sample.crop is not None:
        matches = [(f, None) for f in found if f.label in wanted]
    else:
        matches = [(f, e) for f in found for e in reported if f.label == e.label and iou(f.box, e.box) >= match_iou]
    if matches:
        best, edge = max(matches, key=lambda pair: pair[0].score)
        where = (
            "in the crop" if edge is None else f"(IoU {iou(best.box, edge.box):.2f} with the edge's {edge.score:.2f})"
        )
        return BackendResult("confirmed", list(found), f"found {best.label} {best.score:.2f} {where}", best.score)
    same_label = [f.score for f in found if f.label in wanted]
    edge_said = ", ".join(f"{d.label} {d.score:.2f}" for d in reported)
    where = "in the crop" if sample.crop is not None else "where the edge saw"
    text = f"no {' or '.join(sorted(wanted))} found {where}" + ("" if sample.crop is not None else f" {edge_said}")
    return BackendResult("rejected", list(found), text, 1.0 - max(same_label, default=0.0))


def _judge_motion(found: Sequence[CloudDetection]) -> BackendResult:
    """The edge saw change and no object: any object found confirms."""
    if found:
        best = max(found, key=lambda d: d.score)
        return BackendResult(
            "confirmed", list(found), f"found {best.label} {best.score:.2f} where the edge saw motion", best.score
        )
    return BackendResult("rejected", [], "found nothing where the edge saw motion", 1.0)
