"""Camera clips: fixed cameras where objects enter, cross and leave, with long quiet stretches.

A clip is a folder of JPEG frames (and optionally an MJPG .avi), `gt.jsonl` with the boxes of every
frame, and `events.json`: for each object, the span of frames in which it was in view, and whether
its class is on the watch-list. Real cameras mostly see nothing happen, so the schedule leaves gaps
with no object at all; sensor noise and slow light drift keep those frames from being identical.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from sim.world.compose import (
    MIN_VISIBLE_FRACTION,
    SMALL_OBJECT_MAX_HEIGHT,
    Placement,
    paste,
    random_placement,
    render_background,
    sprites_of,
)
from sim.world.photos import CLASSES, DISTRACTORS, SpriteSource

DEFAULT_WATCH_LIST: tuple[str, ...] = ("person", "motorcycle")
DriftLook = Literal["night", "infrared"]
# The infrared look: what is left of colour, light gain and sensor noise (measured in the drift probe:
# the edge model recalls about a third of what it recalls by day, with many scores in the uncertainty band).
INFRARED_SATURATION = 0.2
INFRARED_GAIN = 0.35
INFRARED_NOISE_SIGMA = 8.0


@dataclass(frozen=True)
class ClipSpec:
    """One camera clip: length, rate, size, how busy the scene is and what is watched."""

    seed: int = 0
    camera: int = 0
    seconds: float = 60.0
    fps: float = 5.0
    width: int = 640
    height: int = 480
    mean_gap_seconds: float = 8.0
    quiet_start_seconds: float = 4.0
    small_fraction: float = 0.25
    night: bool = False
    watch_list: tuple[str, ...] = DEFAULT_WATCH_LIST
    drift_at_s: float | None = None
    drift_to: DriftLook = "night"

    @property
    def frames(self) -> int:
        """Number of frames in the clip."""
        return round(self.seconds * self.fps)

    @property
    def drift_frame(self) -> int | None:
        """The first frame of the drifted look (None: the look never changes)."""
        return None if self.drift_at_s is None else round(self.drift_at_s * self.fps)

    def drifted(self, index: int) -> bool:
        """Whether frame `index` has the drifted look."""
        start = self.drift_frame
        return start is not None and index >= start


@dataclass
class Track:
    """An object crossing the view in a straight line at constant speed."""

    track_id: int
    label: str | None
    source: SpriteSource
    start_frame: int
    end_frame: int
    placement: Placement
    velocity: tuple[float, float]
    first_seen: int | None = None
    last_seen: int | None = None
    boxes: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)

    def at(self, frame: int) -> Placement:
        """Where the sprite is at `frame`."""
        dt = frame - self.start_frame
        p = self.placement
        return Placement(
            p.x + self.velocity[0] * dt, p.y + self.velocity[1] * dt, p.width, p.height, p.flip, p.gain_bgr
        )


def schedule_tracks(spec: ClipSpec, rng: np.random.Generator) -> list[Track]:
    """Arrivals with exponential gaps; each object enters at one side and leaves at the other."""
    tracks: list[Track] = []
    t = spec.quiet_start_seconds
    while True:
        t += float(rng.exponential(spec.mean_gap_seconds))
        start = round(t * spec.fps)
        if start >= spec.frames:
            return tracks
        distractor = rng.random() < 0.2
        if distractor:
            label = None
            source = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        else:
            label = CLASSES[int(rng.integers(len(CLASSES)))]
            options = sprites_of(label)
            source = options[int(rng.integers(len(options)))]
        small = bool(rng.random() < spec.small_fraction)
        base = random_placement(rng, source, spec.width, spec.height, small)
        crossing_seconds = float(rng.uniform(3.0, 9.0))
        from_left = bool(rng.random() < 0.5)
        x0 = -base.width if from_left else float(spec.width)
        x1 = float(spec.width) if from_left else -base.width
        frames = max(2, round(crossing_seconds * spec.fps))
        dy = float(rng.uniform(-0.1, 0.1)) * spec.height / frames
        placement = Placement(x0, base.y, base.width, base.height, not from_left, base.gain_bgr)
        tracks.append(Track(len(tracks), label, source, start, start + frames, placement, ((x1 - x0) / frames, dy)))
        t += crossing_seconds * float(rng.uniform(0.3, 1.0))


def write_clip(spec: ClipSpec, out: Path, video: bool = False, progress: Callable[[int], None] | None = None) -> Path:
    """Render the clip into `out` (created); returns the folder."""
    rng = np.random.default_rng([spec.seed, 1000 + spec.camera])
    day_background = render_background(rng, spec.width, spec.height).astype(np.float32)
    night_background = day_background * 0.3
    tracks = schedule_tracks(spec, rng)
    # Its own generator, so the frames before the drift are those of the same clip without one.
    look_rng = np.random.default_rng([spec.seed, 3000 + spec.camera])
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    writer = None
    if video:
        fourcc = cv2.VideoWriter.fourcc(*"MJPG")
        writer = cv2.VideoWriter(str(out / "clip.avi"), fourcc, spec.fps, (spec.width, spec.height))
    gt_lines = []
    noise_rng = np.random.default_rng([spec.seed, 2000 + spec.camera])
    for index in range(spec.frames):
        # Slow light drift (clouds, auto-exposure) and sensor noise: no two quiet frames are equal.
        light = 1.0 + 0.04 * np.sin(2 * np.pi * index / max(1.0, spec.fps * 40))
        look = spec.drift_to if spec.drifted(index) else ("night" if spec.night else "day")
        background = night_background if look == "night" else day_background
        canvas = np.clip(background * light, 0, 255).astype(np.uint8)
        objects = draw_tracks(canvas, tracks, index)
        noise = noise_rng.normal(0.0, 5.0 if look == "night" else 2.5, size=canvas.shape)
        frame = np.clip(canvas.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        if look == "infrared":
            frame = infrared(frame, look_rng)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError(f"{frames_dir}: OpenCV could not encode frame {index}")
        (frames_dir / f"{index:06d}.jpg").write_bytes(buf.tobytes())
        if writer is not None:
            writer.write(frame)
        gt_lines.append(json.dumps({"frame": index, "t": round(index / spec.fps, 3), "objects": objects}))
        if progress is not None:
            progress(1)
    if writer is not None:
        writer.release()
    (out / "gt.jsonl").write_text("".join(line + "\n" for line in gt_lines))
    (out / "events.json").write_text(json.dumps(events_of(spec, tracks), indent=1) + "\n")
    (out / "clip.json").write_text(json.dumps(clip_manifest(spec), indent=1) + "\n")
    return out


def infrared(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera's IR night mode: colour nearly gone, little light (gamma as `compose.degrade`), more noise."""
    pixels = frame.astype(np.float32)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32)[:, :, None]
    pixels = grey + INFRARED_SATURATION * (pixels - grey)
    pixels = 255.0 * (np.clip(pixels, 0, 255) * INFRARED_GAIN / 255.0) ** 1.1
    pixels += rng.normal(0.0, INFRARED_NOISE_SIGMA, size=pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def draw_tracks(canvas: np.ndarray, tracks: list[Track], index: int) -> list[dict[str, object]]:
    """Paste every track in view at frame `index`; returns the labelled boxes."""
    objects: list[dict[str, object]] = []
    for track in tracks:
        if not track.start_frame <= index <= track.end_frame:
            continue
        placement = track.at(index)
        visible = paste(canvas, track.source, placement)
        if visible is None or track.label is None:
            continue
        area = (visible[2] - visible[0]) * (visible[3] - visible[1])
        if area < MIN_VISIBLE_FRACTION * placement.width * placement.height:
            continue
        track.first_seen = index if track.first_seen is None else track.first_seen
        track.last_seen = index
        objects.append(
            {
                "track": track.track_id,
                "label": track.label,
                "class_id": CLASSES.index(track.label),
                "box": [round(v, 2) for v in visible],
                "small": placement.height <= SMALL_OBJECT_MAX_HEIGHT,
            }
        )
    return objects


def events_of(spec: ClipSpec, tracks: list[Track]) -> list[dict[str, object]]:
    """One event per labelled object that was in view: its first and last visible frame."""
    events: list[dict[str, object]] = []
    for track in tracks:
        if track.label is None or track.first_seen is None or track.last_seen is None:
            continue
        events.append(
            {
                "track": track.track_id,
                "label": track.label,
                "watched": track.label in spec.watch_list,
                "small": track.placement.height <= SMALL_OBJECT_MAX_HEIGHT,
                "start_frame": track.first_seen,
                "end_frame": track.last_seen,
                "start_s": round(track.first_seen / spec.fps, 3),
                "end_s": round(track.last_seen / spec.fps, 3),
            }
        )
    return events


def clip_manifest(spec: ClipSpec) -> dict[str, object]:
    """What a reader needs to interpret the clip."""
    return {
        "seed": spec.seed,
        "camera": spec.camera,
        "fps": spec.fps,
        "frames": spec.frames,
        "width": spec.width,
        "height": spec.height,
        "night": spec.night,
        "drift": None
        if spec.drift_at_s is None
        else {"at_s": spec.drift_at_s, "frame": spec.drift_frame, "to": spec.drift_to},
        "watch_list": list(spec.watch_list),
        "classes": list(CLASSES),
    }
