"""The pictures a lightweight fleet uploads: real JPEG crops of clip frames, with their ground truth.

Each clip's frames are cut and encoded once (a thousand edges share a few clips); every sample an
edge sends is one of these crops, with detections taken from the ground truth plus noise, so the
oracle's verdict is known in advance: a crop around a true object is confirmed, a crop of a frame
with nothing in it (motion without detection) is rejected.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2

from protos import sample_pb2
from sim.fleet.light_config import LightFleetConfig
from sim.world.clips import ClipSpec, write_clip

Expected = Literal["confirmed", "rejected"]


@dataclass(frozen=True, slots=True)
class TrueObject:
    """One ground-truth object of a frame."""

    class_id: int
    label: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class PreparedCrop:
    """One frame of a clip, cut and encoded, with what the edge reports and what the oracle will say."""

    frame_seq: int
    jpeg: bytes
    crop: tuple[int, int, int, int]
    frame_size: tuple[int, int]
    objects: tuple[TrueObject, ...]
    expected: Expected
    jpeg_quality: int


def edge_id_of(index: int) -> str:
    """The id of the index-th simulated edge."""
    return f"light-{index:05d}"


def camera_clips(config: LightFleetConfig, clips: list[Path]) -> dict[str, Path]:
    """'<edge_id>/<camera_id>' -> the clip that camera shows, for every camera of the fleet."""
    return {
        f"{edge_id_of(edge)}/cam{cam}": clips[(edge * config.cameras_per_edge + cam) % len(clips)]
        for edge in range(config.edges)
        for cam in range(config.cameras_per_edge)
    }


def ensure_clips(config: LightFleetConfig, out_dir: Path) -> list[Path]:
    """The configured clip folders, or freshly generated ones under out_dir/clips (blocking)."""
    if config.clips:
        return [path.resolve() for path in config.clips]
    folders = []
    for index in range(config.generated_clips):
        folder = out_dir / "clips" / f"clip{index}"
        spec = ClipSpec(
            seed=config.seed,
            camera=index,
            seconds=config.clip_seconds,
            fps=5.0,
            quiet_start_seconds=2.0,
            mean_gap_seconds=3.0,
        )
        if not (folder / "gt.jsonl").exists():
            write_clip(spec, folder)
        folders.append(folder.resolve())
    return folders


def prepare_clip(folder: Path, config: LightFleetConfig, rng: random.Random) -> list[PreparedCrop]:
    """Up to `frames_per_clip` crops of the clip, busy and empty frames in the configured mix (blocking)."""
    truth: dict[int, list[TrueObject]] = {}
    for line in (folder / "gt.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            truth[int(record["frame"])] = [
                TrueObject(int(o["class_id"]), str(o["label"]), tuple(float(v) for v in o["box"]))  # type: ignore[arg-type]
                for o in record["objects"]
            ]
    busy = [frame for frame, objects in sorted(truth.items()) if objects]
    empty = [frame for frame, objects in sorted(truth.items()) if not objects]
    wanted_empty = round(config.frames_per_clip * config.empty_share) if empty else 0
    chosen = rng.sample(empty, min(wanted_empty, len(empty)))
    chosen += rng.sample(busy, min(config.frames_per_clip - len(chosen), len(busy)))
    if not chosen:
        raise ValueError(f"{folder}: the clip has no frames")
    return [_cut(folder, frame, truth[frame], config, rng) for frame in sorted(chosen)]


def _cut(
    folder: Path, frame: int, objects: list[TrueObject], config: LightFleetConfig, rng: random.Random
) -> PreparedCrop:
    image = cv2.imread(str(folder / "frames" / f"{frame:06d}.jpg"))
    if image is None:
        raise ValueError(f"{folder}/frames/{frame:06d}.jpg cannot be read as an image")
    height, width = image.shape[:2]
    if objects:
        target = rng.choice(objects)
        crop = _around(target.box, config.crop_size, width, height)
        # The edge reports the objects whose centre is in its crop; the target always is.
        inside = tuple(o for o in objects if _centre_in(o.box, crop) or o is target)
        expected: Expected = "confirmed"
    else:
        side = min(config.crop_size, width, height)
        x1, y1 = rng.randrange(width - side + 1), rng.randrange(height - side + 1)
        crop, inside, expected = (x1, y1, x1 + side, y1 + side), (), "rejected"
    x1, y1, x2, y2 = crop
    ok, encoded = cv2.imencode(".jpg", image[y1:y2, x1:x2], [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a crop of {folder} frame {frame}")
    return PreparedCrop(frame, encoded.tobytes(), crop, (width, height), inside, expected, config.jpeg_quality)


def _around(box: tuple[float, float, float, float], side: int, width: int, height: int) -> tuple[int, int, int, int]:
    """A crop at least `side` wide and high holding the whole box, inside the frame."""
    x1, y1, x2, y2 = box
    crop_w = min(width, max(side, int(x2 - x1) + 2))
    crop_h = min(height, max(side, int(y2 - y1) + 2))
    left = min(max(0, int((x1 + x2 - crop_w) / 2)), width - crop_w)
    top = min(max(0, int((y1 + y2 - crop_h) / 2)), height - crop_h)
    return (left, top, left + crop_w, top + crop_h)


def _centre_in(box: tuple[float, float, float, float], crop: tuple[int, int, int, int]) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return crop[0] <= cx < crop[2] and crop[1] <= cy < crop[3]


def build_sample(
    prepared: PreparedCrop, sample_id: str, edge_id: str, camera_id: str, noise_px: float, rng: random.Random
) -> sample_pb2.Sample:
    """The wire sample an edge sends for a prepared crop: ground-truth boxes moved by Gaussian noise."""
    detections = []
    for obj in prepared.objects:
        x1, y1, x2, y2 = (v + rng.gauss(0.0, noise_px) for v in obj.box)
        box = sample_pb2.Box(x1=x1, y1=y1, x2=max(x2, x1 + 1), y2=max(y2, y1 + 1))
        detections.append(
            sample_pb2.Detection(class_id=obj.class_id, label=obj.label, score=rng.uniform(0.3, 0.6), box=box)
        )
    reason = (
        sample_pb2.MINED_REASON_UNCERTAINTY_BAND if detections else sample_pb2.MINED_REASON_MOTION_WITHOUT_DETECTION
    )
    x1, y1, x2, y2 = prepared.crop
    sample = sample_pb2.Sample(
        sample_id=sample_id,
        edge_id=edge_id,
        camera_id=camera_id,
        image=sample_pb2.SampleImage(
            jpeg=prepared.jpeg,
            crop=sample_pb2.CropBox(x1=x1, y1=y1, x2=x2, y2=y2),
            frame_width=prepared.frame_size[0],
            frame_height=prepared.frame_size[1],
            jpeg_quality=prepared.jpeg_quality,
        ),
        detections=detections,
        edge_model_name="light-sim",
        edge_model_version="gt-noise",
        mined_reason=reason,
        priority=0.5,
        trace_id=f"{rng.getrandbits(128):032x}",
        frame_seq=prepared.frame_seq,
    )
    sample.captured_at.GetCurrentTime()
    return sample
