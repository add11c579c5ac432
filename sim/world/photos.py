"""The photographs the world is built from: only files shipped inside installed PyPI wheels.

scikit-image and matplotlib carry a handful of real photos as package data. Nothing is fetched:
if a file is missing the installed package is too old or stripped, and `PhotoMissingError` says so.
Boxes below are in each photo's own pixel coordinates (x1, y1, x2, y2) and were chosen by eye.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

Image = NDArray[np.uint8]

CLASSES: tuple[str, ...] = ("person", "cat", "motorcycle", "cup", "rocket")


class PhotoMissingError(RuntimeError):
    """A sample photo the world needs is not inside the installed packages."""


@dataclass(frozen=True)
class SpriteSource:
    """A region of a photo that becomes an object sprite (or a distractor when label is None)."""

    package: str
    name: str
    box: tuple[int, int, int, int]
    label: str | None
    white_is_transparent: bool = False


@dataclass(frozen=True)
class BackgroundSource:
    """A photo (or texture) that becomes a scene background, with the tint given to grey ones."""

    package: str
    name: str
    tint_bgr: tuple[float, float, float]


SPRITES: tuple[SpriteSource, ...] = (
    SpriteSource("skimage", "astronaut.png", (20, 10, 345, 512), "person"),
    SpriteSource("matplotlib", "grace_hopper.jpg", (50, 40, 512, 600), "person"),
    SpriteSource("skimage", "chelsea.png", (55, 0, 380, 300), "cat"),
    SpriteSource("skimage", "motorcycle_left.png", (105, 105, 695, 460), "motorcycle"),
    SpriteSource("skimage", "motorcycle_right.png", (60, 105, 650, 460), "motorcycle"),
    SpriteSource("skimage", "coffee.png", (50, 0, 485, 395), "cup"),
    SpriteSource("skimage", "rocket.jpg", (262, 110, 372, 427), "rocket"),
    SpriteSource("skimage", "astronaut.png", (345, 0, 465, 285), "rocket"),
)

# Look-alikes: the launch tower next to the rocket (tall, thin, lit), the astronaut's helmet (round,
# dark, glossy like a cup), a horse silhouette (a dark mass with legs like a motorcycle), a gift box,
# coins and a clock. None of them carries a label; a detector that fires on them is wrong.
DISTRACTORS: tuple[SpriteSource, ...] = (
    SpriteSource("skimage", "rocket.jpg", (0, 0, 135, 427), None),
    SpriteSource("skimage", "rocket.jpg", (530, 40, 640, 427), None),
    SpriteSource("skimage", "astronaut.png", (270, 330, 512, 512), None),
    SpriteSource("skimage", "horse.png", (0, 0, 400, 328), None, white_is_transparent=True),
    SpriteSource("matplotlib", "Minduka_Present_Blue_Pack.png", (0, 0, 128, 128), None),
    SpriteSource("skimage", "coins.png", (0, 0, 384, 303), None),
    SpriteSource("skimage", "clock_motion.png", (0, 0, 400, 300), None),
    SpriteSource("skimage", "coffee.png", (470, 0, 600, 400), None),
)

BACKGROUNDS: tuple[BackgroundSource, ...] = (
    BackgroundSource("skimage", "brick.png", (0.75, 0.85, 1.10)),
    BackgroundSource("skimage", "grass.png", (0.65, 1.05, 0.75)),
    BackgroundSource("skimage", "gravel.png", (0.90, 0.95, 1.00)),
    BackgroundSource("skimage", "hubble_deep_field.jpg", (1.0, 1.0, 1.0)),
    BackgroundSource("skimage", "moon.png", (0.95, 0.95, 0.95)),
    BackgroundSource("skimage", "page.png", (0.85, 0.92, 1.0)),
)


def package_data_dir(package: str) -> Path:
    """Folder holding the sample photos of `package` ('skimage' or 'matplotlib')."""
    if package == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent
    if package == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    raise ValueError(f"unknown photo package {package!r} (expected 'skimage' or 'matplotlib')")


@functools.cache
def load_photo(package: str, name: str) -> Image:
    """Load a shipped photo as BGR uint8; alpha is composited on white, grey becomes 3 channels."""
    raw = _read_raw(package, name)
    if raw.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR))
    if raw.shape[2] == 4:
        alpha = raw[:, :, 3:4].astype(np.float32) / 255.0
        rgb = raw[:, :, :3].astype(np.float32)
        return np.ascontiguousarray((rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8))
    return np.ascontiguousarray(raw)


@functools.cache
def load_alpha(package: str, name: str) -> NDArray[np.float32] | None:
    """The photo's own alpha channel in [0, 1], or None when it has none."""
    raw = _read_raw(package, name)
    if raw.ndim == 3 and raw.shape[2] == 4:
        return (raw[:, :, 3].astype(np.float32) / 255.0).astype(np.float32)
    return None


def _read_raw(package: str, name: str) -> NDArray[np.uint8]:
    path = package_data_dir(package) / name
    if not path.is_file():
        raise PhotoMissingError(
            f"{path}: sample photo not found; reinstall {package} (the world needs the photos its wheel ships)"
        )
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise PhotoMissingError(f"{path}: could not be decoded by OpenCV")
    if raw.dtype != np.uint8:
        raw = (raw / 257).astype(np.uint8)
    return np.asarray(raw, dtype=np.uint8)


@functools.cache
def sprite_image(source: SpriteSource) -> tuple[Image, NDArray[np.float32]]:
    """The sprite's pixels and its soft alpha mask (an ellipse with a feathered rim)."""
    photo = load_photo(source.package, source.name)
    x1, y1, x2, y2 = source.box
    crop = np.ascontiguousarray(photo[y1:y2, x1:x2])
    h, w = crop.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # A superellipse (exponent 4) keeps the corners of boxy objects while hiding the crop's edges.
    dist = np.abs((xx - w / 2 + 0.5) / (w / 2)) ** 4 + np.abs((yy - h / 2 + 0.5) / (h / 2)) ** 4
    alpha = np.clip((1.0 - dist) / 0.25, 0.0, 1.0).astype(np.float32)
    own_alpha = load_alpha(source.package, source.name)
    if own_alpha is not None:
        alpha *= own_alpha[y1:y2, x1:x2]
    if source.white_is_transparent:
        grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
        alpha *= np.clip((1.0 - grey) * 1.5, 0.0, 1.0)
    return crop, alpha


def background_texture(source: BackgroundSource) -> Image:
    """The background photo, tinted when it is grey so scenes are not all monochrome."""
    photo = load_photo(source.package, source.name).astype(np.float32)
    tinted = photo * np.asarray(source.tint_bgr, dtype=np.float32)
    return np.clip(tinted, 0, 255).astype(np.uint8)
