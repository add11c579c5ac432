"""Crops of the sim world for the world GLM: what the edge would upload, with the ground truth.

Positive crops surround a labelled object of a generated frame (jittered, with context); negative
crops ("nothing") are windows of a frame that hold no labelled object and renders of a look-alike
(`DISTRACTORS`) on a background. Train and test crops come from different generated frames (the
dataset's "train" and "test" splits of one seed), but from the SAME few photos: the world has one
sprite per class or two, so held-out crops test new poses, sizes, lighting and backgrounds, not new
objects. A photo the model has never seen is out of its reach.

Each crop also gets an edge claim (right label, wrong label, or nothing), drawn per use, and the
answer the model must give, from `cloud.backends.verdict_text` so training and serving share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from cloud.backends.verdict_text import ParsedAnswer
from protos.reasons import MinedReasonName
from sim.world.compose import (
    Placement,
    degrade,
    paste,
    random_conditions,
    render_background,
)
from sim.world.dataset import DatasetSpec, render_dataset_image
from sim.world.photos import CLASSES, DISTRACTORS, Image

_T = TypeVar("_T")
NOTHING = "nothing"
# A crop around an object is its box grown by this factor (context) before jitter.
CONTEXT_RANGE = (1.1, 1.7)
# Background windows may overlap a labelled object by at most this share of the object's area.
MAX_OBJECT_SHARE_IN_NEGATIVE = 0.1
CLAIM_REASONS: tuple[MinedReasonName, ...] = ("uncertainty_band", "ibt", "cross_entropy", "watch_list", "random_audit")
NO_CLAIM_REASONS: tuple[MinedReasonName, ...] = ("motion_without_detection", "random_audit")


@dataclass(frozen=True)
class Crop:
    """One crop (BGR, any size) and what it shows: a class name or NOTHING; `hard` for degraded views.

    `claim` is what the edge really said about it (crops of the edge's own detections, `sim.glm.hard`);
    None: a claim is drawn per use (`draw_claim`)."""

    image: Image
    label: str
    hard: bool
    frame: int
    claim: Claim | None = None


@dataclass(frozen=True)
class Claim:
    """What the edge said about a crop: its detections (label, score) and why it mined the sample."""

    detections: tuple[tuple[str, float], ...]
    reason: MinedReasonName


def frame_crops(split: str, frames: int, seed: int, rng: np.random.Generator) -> Iterator[Crop]:
    """Crops from frames 0..frames-1 of the world dataset's `split`: every object, a background window, a look-alike."""
    spec = DatasetSpec(seed=seed)
    for index in range(frames):
        scene = render_dataset_image(spec, split, index)
        degraded = bool(scene.conditions.darkness_gain or scene.conditions.blur_sigma)
        for obj in scene.objects:
            crop = _object_window(scene.image, obj.box, rng)
            if crop is not None:
                yield Crop(crop, obj.label, obj.small or obj.occluded or degraded, index)
        window = _empty_window(scene.image, [obj.box for obj in scene.objects], rng)
        if window is not None:
            yield Crop(window, NOTHING, degraded, index)
        if rng.random() < 0.6:
            yield Crop(_lookalike(rng), NOTHING, False, index)


def _object_window(image: Image, box: tuple[float, float, float, float], rng: np.random.Generator) -> Image | None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    side_w = w * float(rng.uniform(*CONTEXT_RANGE))
    side_h = h * float(rng.uniform(*CONTEXT_RANGE))
    # Pull the window toward a square, as the edge's crop does with some context.
    side_w, side_h = max(side_w, 0.6 * side_h), max(side_h, 0.6 * side_w)
    cx = (x1 + x2) / 2 + float(rng.uniform(-0.12, 0.12)) * w
    cy = (y1 + y2) / 2 + float(rng.uniform(-0.12, 0.12)) * h
    return _cut(image, (cx - side_w / 2, cy - side_h / 2, cx + side_w / 2, cy + side_h / 2))


def _empty_window(
    image: Image, boxes: list[tuple[float, float, float, float]], rng: np.random.Generator
) -> Image | None:
    fh, fw = image.shape[:2]
    for _attempt in range(20):
        side = float(rng.uniform(24, 220))
        width = side * float(rng.uniform(0.7, 1.4))
        x, y = float(rng.uniform(0, fw - width)), float(rng.uniform(0, fh - side))
        window = (x, y, x + width, y + side)
        if all(_share_inside(b, window) <= MAX_OBJECT_SHARE_IN_NEGATIVE for b in boxes):
            return _cut(image, window)
    return None


def _lookalike(rng: np.random.Generator) -> Image:
    """A look-alike pasted on a background, framed as an edge crop of it would be."""
    side = int(rng.integers(96, 200))
    canvas = np.ascontiguousarray(render_background(rng, side, side))
    source = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
    sx1, sy1, sx2, sy2 = source.box
    aspect = (sx2 - sx1) / (sy2 - sy1)
    height = side * float(rng.uniform(0.55, 0.9))
    width = min(side * 0.95, height * aspect)
    height = width / aspect
    x = (side - width) / 2 + float(rng.uniform(-0.1, 0.1)) * side
    y = (side - height) / 2 + float(rng.uniform(-0.1, 0.1)) * side
    gains = rng.uniform(0.85, 1.15, size=3)
    paste(canvas, source, Placement(x, y, width, height, bool(rng.random() < 0.5), (gains[0], gains[1], gains[2])))
    return degrade(canvas, random_conditions(rng), rng)


def _share_inside(box: tuple[float, float, float, float], window: tuple[float, float, float, float]) -> float:
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area <= 0:
        return 0.0
    iw = max(0.0, min(box[2], window[2]) - max(box[0], window[0]))
    ih = max(0.0, min(box[3], window[3]) - max(box[1], window[1]))
    return iw * ih / area


def _cut(image: Image, window: tuple[float, float, float, float]) -> Image | None:
    fh, fw = image.shape[:2]
    x1, y1 = max(0, round(window[0])), max(0, round(window[1]))
    x2, y2 = min(fw, round(window[2])), min(fh, round(window[3]))
    if x2 - x1 < 8 or y2 - y1 < 8:
        return None
    return np.ascontiguousarray(image[y1:y2, x1:x2])


def draw_claim(label: str, rng: np.random.Generator) -> Claim:
    """What an edge might have said about a crop showing `label`: right, wrong, or nothing."""
    roll = float(rng.random())
    others = [c for c in CLASSES if c != label]
    if label == NOTHING:
        if roll < 0.4:
            return Claim((), _pick(NO_CLAIM_REASONS, rng))
        claimed = CLASSES[int(rng.integers(len(CLASSES)))]
        return Claim(((claimed, _score(rng)),), _pick(CLAIM_REASONS, rng))
    if roll < 0.25:
        return Claim((), _pick(NO_CLAIM_REASONS, rng))
    if roll < 0.6:
        detections = [(label, _score(rng))]
        if rng.random() < 0.2:
            detections.append((_pick(tuple(others), rng), _score(rng)))
            rng.shuffle(detections)  # type: ignore[arg-type,unused-ignore]
        return Claim(tuple(detections), _pick(CLAIM_REASONS, rng))
    return Claim(((_pick(tuple(others), rng), _score(rng)),), _pick(CLAIM_REASONS, rng))


def true_answer(label: str, hard: bool, claim: Claim) -> ParsedAnswer:
    """The answer the world GLM must give for a crop showing `label` under `claim`."""
    claimed = [name for name, _score in claim.detections]
    if label == NOTHING:
        what = " or ".join(claimed) if claimed else "object"
        return ParsedAnswer("rejected", (), 0.9, f"no {what}, only background")
    confidence = 0.7 if hard else 0.95
    if not claimed:
        return ParsedAnswer("confirmed", (label,), confidence, f"a {label} where motion was seen")
    if label in claimed:
        return ParsedAnswer("confirmed", (label,), confidence, f"a {label}, as the edge said")
    return ParsedAnswer("rejected", (label,), confidence, f"a {label}, not a {claimed[0]}")


def _pick(options: tuple[_T, ...], rng: np.random.Generator) -> _T:
    return options[int(rng.integers(len(options)))]


def _score(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(0.25, 0.9)), 2)
