"""Turning bytes and arrays from the outside into frames the detector accepts.

Frames are BGR ``uint8`` arrays of shape ``H x W x 3``, the OpenCV convention. Anything else is
either converted (grey) or refused with a message naming the source, never passed on to fail deep
inside OpenCV or ONNX Runtime.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from common.detect.errors import DetectorError, ImageDecodeError

_JPEG_START = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its fixed CRC


def decode_image(data: bytes, source: str) -> NDArray[np.uint8]:
    """Decode JPEG/PNG (or any format OpenCV reads) bytes into a BGR frame; ``source`` names it in errors."""
    if not data:
        raise ImageDecodeError(f"{source}: image is empty (0 bytes)")
    _check_complete(data, source)
    try:
        frame = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(f"{source}: image cannot be decoded ({len(data)} bytes): {exc}") from exc
    if frame is None or frame.size == 0:
        raise ImageDecodeError(
            f"{source}: image cannot be decoded ({len(data)} bytes, starts with {data[:8].hex()}); "
            "expected JPEG or PNG bytes"
        )
    return np.asarray(frame, dtype=np.uint8)


def _check_complete(data: bytes, source: str) -> None:
    """Refuse truncated JPEG and PNG files.

    libjpeg decodes a truncated JPEG "successfully", filling the missing part with grey, and only
    warns on stderr; a detector fed that frame reports nonsense. So the end marker is checked here.
    """
    if data.startswith(_JPEG_START):
        # Some cameras pad files with zero bytes after the end-of-image marker.
        if not data.rstrip(b"\x00").endswith(_JPEG_END):
            raise ImageDecodeError(f"{source}: JPEG is truncated ({len(data)} bytes, no end-of-image marker FFD9)")
    elif data.startswith(_PNG_START) and not data.endswith(_PNG_END):
        raise ImageDecodeError(f"{source}: PNG is truncated ({len(data)} bytes, no IEND chunk)")


def as_bgr_frame(frame: object, name: str) -> NDArray[np.uint8]:
    """Check a frame is a non-empty BGR uint8 image, converting grey ones; ``name`` names it in errors."""
    if not isinstance(frame, np.ndarray):
        raise DetectorError(f"{name}: expected a numpy array (BGR uint8 HxWx3), got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise DetectorError(
            f"{name}: expected dtype uint8 (BGR as OpenCV decodes it), got {frame.dtype}; "
            "convert 0..1 floats with (frame * 255).astype(np.uint8)"
        )
    if frame.ndim not in (2, 3) or frame.size == 0:
        raise DetectorError(f"{name}: expected a non-empty HxWx3 image, got shape {frame.shape}")
    channels = 1 if frame.ndim == 2 else frame.shape[2]
    if channels == 1:
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if channels != 3:
        raise DetectorError(f"{name}: expected 3 channels (BGR) or 1 (grey), got {channels} in shape {frame.shape}")
    # OpenCV refuses some non-contiguous views (e.g. frame[:, ::-1]); this copies only then.
    return np.ascontiguousarray(frame)
