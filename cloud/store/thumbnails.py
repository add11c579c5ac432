"""Small JPEG thumbnails of sample images for the dashboard (blocking: call in an executor)."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from cloud.convert import encode_jpeg

THUMBNAIL_MAX_PX = 160
THUMBNAIL_QUALITY = 75


def make_thumbnail(image: NDArray[np.uint8], max_px: int = THUMBNAIL_MAX_PX, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """A JPEG of the BGR `image` whose longer side is at most `max_px` (never upscaled)."""
    height, width = int(image.shape[0]), int(image.shape[1])
    scale = min(1.0, max_px / max(height, width, 1))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return encode_jpeg(image, quality)
