"""Samples of generated clips as an edge would send them, for tests and benchmarks that need real ones.

`frame_sample` is a full-frame sample of one frame whose edge detections are the frame's true objects,
so the oracle backend (and a judge that is right) confirms it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protos import sample_pb2


def clip_truth(clip: Path) -> dict[int, list[dict[str, Any]]]:
    """Ground-truth objects of a clip (its gt.jsonl) by frame number."""
    lines = (clip / "gt.jsonl").read_text().splitlines()
    return {record["frame"]: record["objects"] for record in map(json.loads, lines)}


def busy_frames(clip: Path) -> list[int]:
    """The frames of a clip with at least one object."""
    return [frame for frame, objects in sorted(clip_truth(clip).items()) if objects]


def frame_sample(
    clip: Path, frame: int, sample_id: str, edge_id: str, jpeg: bytes | None = None, camera_id: str = "cam0"
) -> sample_pb2.Sample:
    """A full-frame sample of `frame` (its JPEG, or `jpeg`) whose edge detections are its true objects."""
    detections = [
        sample_pb2.Detection(
            class_id=o["class_id"],
            label=o["label"],
            score=0.5,
            box=sample_pb2.Box(x1=o["box"][0], y1=o["box"][1], x2=o["box"][2], y2=o["box"][3]),
        )
        for o in clip_truth(clip)[frame]
    ]
    image = sample_pb2.SampleImage(
        jpeg=(clip / "frames" / f"{frame:06d}.jpg").read_bytes() if jpeg is None else jpeg,
        frame_width=640,
        frame_height=480,
        jpeg_quality=90,
    )
    return sample_pb2.Sample(
        sample_id=sample_id,
        edge_id=edge_id,
        camera_id=camera_id,
        frame_seq=frame,
        image=image,
        detections=detections,
        mined_reason=sample_pb2.MINED_REASON_UNCERTAINTY_BAND,
        priority=0.5,
        trace_id=f"trace-{sample_id}",
    )
