"""What a fleet run achieved, measured against the world's ground truth.

Event recall: a watched object (an event in a clip's events.json) counts as recalled when the edge
recorded an event of the same label on the same camera while the object was in view — either a
confident local detection or a detection the cloud confirmed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sim.eval.events import EventScore, add, event_tracks, score_camera, truth_objects


@dataclass(frozen=True)
class CameraRun:
    """One camera of one edge: its clip folder and the id the agent gave it."""

    edge_id: str
    camera_id: str
    clip: Path


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile, or None without values."""
    return float(np.percentile(values, q)) if values else None


def read_jsonl(path: Path) -> list[dict[str, object]]:
    """Every JSON line of a file (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score_events(cameras: Iterable[CameraRun], events_by_edge: dict[str, list[dict[str, object]]]) -> EventScore:
    """Object recall and event precision over the cameras (definitions in sim.eval.events)."""
    scores = []
    for camera in cameras:
        tracks = event_tracks(events_by_edge.get(camera.edge_id, [])).get(camera.camera_id, [])
        scores.append(score_camera(truth_objects(camera.clip), tracks))
    return add(scores)


def cloud_only_bytes(cameras: Iterable[CameraRun], jpeg_quality: int) -> tuple[int, int]:
    """(frames, bytes) if every frame went up as a full JPEG at the uplink's quality."""
    frames = total = 0
    for camera in cameras:
        for path in sorted((camera.clip / "frames").glob("*.jpg")):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{path}: unreadable frame")
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                raise RuntimeError(f"{path}: OpenCV could not encode a JPEG")
            frames += 1
            total += len(buf)
    return frames, total
