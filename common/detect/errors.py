"""Errors of the detect stage.

Every message starts with what it is about (the model file, the image source, the frame) so that a
person reading a log line knows where to look without a traceback.
"""

from __future__ import annotations


class DetectorError(Exception):
    """The detector cannot load a model or cannot run on the input it was given."""


class ImageDecodeError(DetectorError):
    """Encoded image bytes (JPEG, PNG) are empty, corrupt or truncated."""
