"""Composing one camera image: a background, object sprites, look-alikes and the hard cases.

Everything is drawn from a `numpy.random.Generator` handed in by the caller, so a seed fixes the
pixels and the labels. Boxes are those of the *visible* part of an object, as in COCO.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from common.boxes import iou
from sim.world.photos import (
    BACKGROUNDS,
    CLASSES,
    DISTRACTORS,
    SPRITES,
    Image,
    SpriteSource,
    background_texture,
    sprite_image,
)

# Smallest visible fraction of an object (after occlusion and frame edges) that still gets a label.
MIN_VISIBLE_FRACTION = 0.35
# Objects at most this tall (pixels, at the native frame size) count as small / distant.
SMALL_OBJECT_MAX_HEIGHT = 36


@dataclass(frozen=True)
class Placement:
    """Where a sprite goes: top-left corner and size in frame pixels, plus its looks."""

    x: float
    y: float
    width: float
    height: float
    flip: bool = False
    gain_bgr: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class LabelledObject:
    """One labelled object in a frame: visible box in frame pixels and what makes it hard."""

    label: str
    box: tuple[float, float, float, float]
    small: bool
    occluded: bool
    track_id: int | None = None

    @property
    def class_id(self) -> int:
        """Index of the label in CLASSES."""
        return CLASSES.index(self.label)


@dataclass
class Conditions:
    """Whole-frame degradations; None means absent."""

    darkness_gain: float | None = None
    blur_sigma: float | None = None
    noise_sigma: float | None = None
    jpeg_quality: int | None = None

    def tags(self) -> list[str]:
        """Names of the degradations present, for the metadata files."""
        names = {
            "dark": self.darkness_gain,
            "blur": self.blur_sigma,
            "noise": self.noise_sigma,
            "jpeg": self.jpeg_quality,
        }
        return [name for name, value in names.items() if value is not None]


@dataclass
class Scene:
    """A rendered frame with its ground truth."""

    image: Image
    objects: list[LabelledObject] = field(default_factory=list)
    distractors: int = 0
    conditions: Conditions = field(default_factory=Conditions)

    @property
    def hard(self) -> bool:
        """True when the frame holds a case a small edge model is expected to struggle with."""
        return (
            any(obj.small or obj.occluded for obj in self.objects)
            or self.conditions.darkness_gain is not None
            or self.conditions.blur_sigma is not None
        )


def sprites_of(label: str) -> list[SpriteSource]:
    """All sprite sources of one class."""
    return [source for source in SPRITES if source.label == label]


def render_background(rng: np.random.Generator, width: int, height: int) -> Image:
    """A random crop of a random background photo, scaled to the frame, flipped and lit at random."""
    source = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    texture = background_texture(source)
    th, tw = texture.shape[:2]
    crop_scale = float(rng.uniform(0.55, 1.0))
    ch = max(16, int(min(th, tw * height / width) * crop_scale))
    cw = max(16, int(ch * width / height))
    cw, ch = min(cw, tw), min(ch, th)
    x0 = int(rng.integers(0, tw - cw + 1))
    y0 = int(rng.integers(0, th - ch + 1))
    frame = cv2.resize(texture[y0 : y0 + ch, x0 : x0 + cw], (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        frame = frame[:, ::-1]
    gain = float(rng.uniform(0.8, 1.15))
    return np.asarray(np.clip(frame.astype(np.float32) * gain, 0, 255), dtype=np.uint8)


def paste(canvas: Image, source: SpriteSource, placement: Placement) -> tuple[float, float, float, float] | None:
    """Alpha-blend a sprite into `canvas` in place; returns the visible box or None if off-frame."""
    pixels, alpha = sprite_image(source)
    width = max(2, round(placement.width))
    height = max(2, round(placement.height))
    interp = cv2.INTER_AREA if width < pixels.shape[1] else cv2.INTER_LINEAR
    sprite = cv2.resize(pixels, (width, height), interpolation=interp).astype(np.float32)
    mask = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
    if placement.flip:
        sprite, mask = sprite[:, ::-1], mask[:, ::-1]
    sprite *= np.asarray(placement.gain_bgr, dtype=np.float32)
    x0, y0 = round(placement.x), round(placement.y)
    fh, fw = canvas.shape[:2]
    cx1, cy1 = max(0, x0), max(0, y0)
    cx2, cy2 = min(fw, x0 + width), min(fh, y0 + height)
    if cx2 - cx1 < 2 or cy2 - cy1 < 2:
        return None
    sx1, sy1 = cx1 - x0, cy1 - y0
    sub_mask = mask[sy1 : sy1 + cy2 - cy1, sx1 : sx1 + cx2 - cx1, None]
    sub_sprite = sprite[sy1 : sy1 + cy2 - cy1, sx1 : sx1 + cx2 - cx1]
    region = canvas[cy1:cy2, cx1:cx2].astype(np.float32)
    blended = sub_sprite * sub_mask + region * (1.0 - sub_mask)
    canvas[cy1:cy2, cx1:cx2] = np.clip(blended, 0, 255).astype(np.uint8)
    visible = np.argwhere(sub_mask[:, :, 0] > 0.5)
    if visible.size == 0:
        return None
    (vy1, vx1), (vy2, vx2) = visible.min(axis=0), visible.max(axis=0)
    return (float(cx1 + vx1), float(cy1 + vy1), float(cx1 + vx2 + 1), float(cy1 + vy2 + 1))


def occlude(
    canvas: Image, box: tuple[float, float, float, float], rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Cover one side of `box` with a slab of another photo; returns the box of what stays visible."""
    x1, y1, x2, y2 = box
    fraction = float(rng.uniform(0.3, 0.55))
    side = int(rng.integers(4))
    occluder = render_background(rng, max(2, int(x2 - x1)), max(2, int(y2 - y1)))
    w, h = x2 - x1, y2 - y1
    if side == 0:  # from the left
        cut = int(w * fraction)
        canvas[int(y1) : int(y2), int(x1) : int(x1) + cut] = occluder[: int(y2) - int(y1), :cut]
        return (x1 + cut, y1, x2, y2)
    if side == 1:  # from the right
        cut = int(w * fraction)
        canvas[int(y1) : int(y2), int(x2) - cut : int(x2)] = occluder[: int(y2) - int(y1), :cut]
        return (x1, y1, x2 - cut, y2)
    if side == 2:  # from the bottom, like a parked car or a counter in front
        cut = int(h * fraction)
        canvas[int(y2) - cut : int(y2), int(x1) : int(x2)] = occluder[:cut, : int(x2) - int(x1)]
        return (x1, y1, x2, y2 - cut)
    cut = int(h * fraction)
    canvas[int(y1) : int(y1) + cut, int(x1) : int(x2)] = occluder[:cut, : int(x2) - int(x1)]
    return (x1, y1 + cut, x2, y2)


def random_placement(
    rng: np.random.Generator, source: SpriteSource, frame_w: int, frame_h: int, small: bool
) -> Placement:
    """A size, position and look for a sprite; small objects are 10 to 36 px tall."""
    sx1, sy1, sx2, sy2 = source.box
    aspect = (sx2 - sx1) / (sy2 - sy1) * float(rng.uniform(0.9, 1.1))
    height = float(rng.uniform(12, SMALL_OBJECT_MAX_HEIGHT)) if small else float(rng.uniform(48, frame_h * 0.5))
    width = height * aspect
    x = float(rng.uniform(-0.15 * width, frame_w - 0.85 * width))
    y = float(rng.uniform(-0.1 * height, frame_h - 0.9 * height))
    gains = rng.uniform(0.9, 1.1, size=3) * float(rng.uniform(0.75, 1.25))
    return Placement(x, y, width, height, bool(rng.random() < 0.5), (gains[0], gains[1], gains[2]))


def random_conditions(rng: np.random.Generator) -> Conditions:
    """Degradations of a frame, each present with its own probability."""
    return Conditions(
        darkness_gain=float(rng.uniform(0.18, 0.4)) if rng.random() < 0.2 else None,
        blur_sigma=float(rng.uniform(1.2, 2.8)) if rng.random() < 0.15 else None,
        noise_sigma=float(rng.uniform(6, 18)) if rng.random() < 0.25 else None,
        jpeg_quality=int(rng.integers(12, 31)) if rng.random() < 0.2 else None,
    )


def degrade(image: Image, conditions: Conditions, rng: np.random.Generator) -> Image:
    """Apply low light, blur, sensor noise and JPEG artefacts, in the order a camera would."""
    out = image.astype(np.float32)
    if conditions.blur_sigma is not None:
        out = np.asarray(cv2.GaussianBlur(out, (0, 0), conditions.blur_sigma), dtype=np.float32)
    if conditions.darkness_gain is not None:
        # Low light: less signal, then gamma lifts the shadows as an auto-exposure would.
        out = 255.0 * (out * conditions.darkness_gain / 255.0) ** 1.1
    if conditions.noise_sigma is not None:
        out += rng.normal(0.0, conditions.noise_sigma, size=out.shape).astype(np.float32)
    result = np.clip(out, 0, 255).astype(np.uint8)
    if conditions.jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", result, [cv2.IMWRITE_JPEG_QUALITY, conditions.jpeg_quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG; the OpenCV build lacks libjpeg")
        result = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), dtype=np.uint8)
    return result


def render_scene(rng: np.random.Generator, width: int = 640, height: int = 480) -> Scene:
    """One still image for the detector dataset."""
    canvas = np.ascontiguousarray(render_background(rng, width, height))
    distractors = int(rng.choice([0, 1, 2], p=[0.55, 0.3, 0.15]))
    for _ in range(distractors):
        source = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        paste(canvas, source, random_placement(rng, source, width, height, small=rng.random() < 0.2))
    count = int(rng.choice([0, 1, 2, 3, 4], p=[0.08, 0.34, 0.3, 0.18, 0.1]))
    objects: list[LabelledObject] = []
    for _ in range(count):
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        options = sprites_of(label)
        source = options[int(rng.integers(len(options)))]
        small = bool(rng.random() < 0.25)
        for _attempt in range(8):
            placement = random_placement(rng, source, width, height, small)
            box = (placement.x, placement.y, placement.x + placement.width, placement.y + placement.height)
            if all(iou(box, other.box) < 0.2 for other in objects):
                break
        visible = paste(canvas, source, placement)
        if visible is None:
            continue
        full_area = placement.width * placement.height
        occluded = not small and rng.random() < 0.18
        if occluded:
            visible = occlude(canvas, visible, rng)
        area = (visible[2] - visible[0]) * (visible[3] - visible[1])
        if area < MIN_VISIBLE_FRACTION * full_area:
            continue
        objects.append(LabelledObject(label, visible, small, occluded))
    conditions = random_conditions(rng)
    image = degrade(canvas, conditions, rng)
    return Scene(image=image, objects=objects, distractors=distractors, conditions=conditions)


def yolo_label_lines(objects: list[LabelledObject], width: int, height: int) -> list[str]:
    """YOLO txt lines: class cx cy w h, normalised, six decimals (stable text across runs)."""
    lines = []
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{obj.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines
