"""Turning bytes and arrays from the outside into frames the detector accepts.

Frames are BGR ``uint8`` arrays of shape ``H x W x 3``, the OpenCV convention. Anything else is
either converted (grey) or refused with a message naming the source, never passed on to fail deep
inside OpenCV or ONNX Runtime.

Bytes from outside are hostile until read: the size an image's header claims is checked before a
pixel is decoded (a 630-byte JPEG can claim 30,000 x 30,000 pixels: 2.7 GB decoded), and JPEGs are
decoded by libjpeg-turbo through simplejpeg in strict mode, where libjpeg's warnings are errors: a
truncated file, even with an end-of-image marker appended, is refused instead of being decoded
"successfully" with its missing part filled with grey. This is the one place that decodes images;
the cloud's samples come through it too.
"""

from __future__ import annotations

import cv2
import numpy as np
import simplejpeg
from numpy.typing import NDArray

from common.detect.errors import DetectorError, ImageDecodeError

_JPEG_START = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its fixed CRC
# The largest image accepted: 8K UHD (7680 x 4320, 33 MP) with room; a decoded 40 MP frame is 120 MB.
MAX_IMAGE_PIXELS = 40_000_000


def decode_image(
    data: bytes, source: str, *, max_pixels: int = MAX_IMAGE_PIXELS, jpeg_only: bool = False
) -> NDArray[np.uint8]:
    """Decode JPEG/PNG (or any format OpenCV reads) bytes into a BGR frame; ``source`` names it in errors.

    ImageDecodeError for empty, corrupt or truncated bytes, a header claiming more than `max_pixels`
    pixels (checked before decoding), and, with `jpeg_only`, anything but a JPEG.
    """
    if not data:
        raise ImageDecodeError(f"{source}: image is empty (0 bytes)")
    if data.startswith(_JPEG_START):
        return _decode_jpeg(data, source, max_pixels)
    if jpeg_only:
        raise ImageDecodeError(f"{source}: not a JPEG (starts with {data[:8].hex()})")
    if data.startswith(_PNG_START):
        if not data.endswith(_PNG_END):
            raise ImageDecodeError(f"{source}: PNG is truncated ({len(data)} bytes, no IEND chunk)")
        # IHDR is the first chunk: width and height, big-endian, right after its type.
        _check_pixels(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), source, max_pixels)
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


def _check_pixels(width: int, height: int, source: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{source}: image header claims {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{source}: image header claims {width}x{height} pixels ({width * height / 1e6:.1f} MP), "
            f"more than the {max_pixels / 1e6:.0f} MP accepted; not decoded"
        )


def _decode_jpeg(data: bytes, source: str, max_pixels: int) -> NDArray[np.uint8]:
    # Some cameras pad files with zero bytes after the end-of-image marker.
    if not data.rstrip(b"\x00").endswith(_JPEG_END):
        raise ImageDecodeError(f"{source}: JPEG is truncated ({len(data)} bytes, no end-of-image marker FFD9)")
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ImageDecodeError(f"{source}: JPEG cannot be decoded ({len(data)} bytes), its header: {exc}") from exc
    _check_pixels(width, height, source, max_pixels)
    try:
        frame = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError as exc:
        raise ImageDecodeError(f"{source}: JPEG cannot be decoded ({len(data)} bytes): {exc}") from exc
    return np.ascontiguousarray(frame, dtype=np.uint8)


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
