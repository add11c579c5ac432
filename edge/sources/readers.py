"""Blocking frame readers, one per kind of source; they run in the camera's own thread.

A reader moves to the next frame with `grab` (cheap: a skipped frame is never decoded) and decodes
the current one with `retrieve`. Network streams and video files go through `cv2.VideoCapture`
(FFmpeg); a folder of images is read file by file and decoded with `cv2.imdecode`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from common.detect.errors import ImageDecodeError
from common.detect.image import decode_image
from edge.sources.config import CameraConfig, redact, source_kind

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Containers report nonsense rates (0, 90000) when they do not know; such files are paced at fps_cap.
_MAX_PLAUSIBLE_FPS = 1000.0


class SourceOpenError(Exception):
    """The source could not be opened (unreachable camera, missing file, empty folder)."""


class BadFrameError(Exception):
    """One frame could not be decoded; the source goes on with the next."""


class Reader(Protocol):
    """An open source of frames."""

    @property
    def native_fps(self) -> float | None:
        """Frame rate recorded in a file, None when unknown or live."""
        ...

    def grab(self) -> int | None:
        """Move to the next frame and return its index in this pass, or None at the end (or on failure)."""
        ...

    def retrieve(self) -> NDArray[np.uint8]:
        """Decode the frame `grab` moved to; BadFrameError when it cannot be decoded."""
        ...

    def close(self) -> None:
        """Release the source."""
        ...


def open_reader(config: CameraConfig) -> Reader:
    """Open the source `config.url` names; SourceOpenError saying why it cannot be opened."""
    if source_kind(config.url) == "network":
        return VideoReader.open_network(config.url, config.open_timeout_s, config.stall_timeout_s)
    path = Path(config.url)
    if path.is_dir():
        return FolderReader.open(path)
    if not path.exists():
        raise SourceOpenError(f"{path}: no such video file or image folder")
    return VideoReader.open_file(path)


class VideoReader:
    """A network stream or a video file through cv2.VideoCapture."""

    def __init__(self, capture: cv2.VideoCapture, native_fps: float | None) -> None:
        self._capture = capture
        self._native_fps = native_fps
        self._index = -1

    @classmethod
    def open_network(cls, url: str, open_timeout_s: float, read_timeout_s: float) -> VideoReader:
        """Open an RTSP/HTTP stream; neither the open nor any read blocks longer than its timeout."""
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            max(1, round(open_timeout_s * 1000)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(1, round(read_timeout_s * 1000)),
        ]
        capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            raise SourceOpenError(f"{redact(url)}: cannot open the stream (unreachable, refused or not a video)")
        return cls(capture, None)

    @classmethod
    def open_file(cls, path: Path) -> VideoReader:
        """Open a video file."""
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            capture.release()
            raise SourceOpenError(f"{path}: OpenCV cannot open this file as a video")
        fps = capture.get(cv2.CAP_PROP_FPS)
        return cls(capture, fps if 0.0 < fps <= _MAX_PLAUSIBLE_FPS else None)

    @property
    def native_fps(self) -> float | None:
        """Frame rate recorded in the file, None when unknown or live."""
        return self._native_fps

    def grab(self) -> int | None:
        """Next frame's index, None at the end of the file or when the stream fails or times out."""
        if not self._capture.grab():
            return None
        self._index += 1
        return self._index

    def retrieve(self) -> NDArray[np.uint8]:
        """The grabbed frame, decoded to BGR."""
        ok, image = self._capture.retrieve()
        if not ok or image is None or image.size == 0:
            raise BadFrameError(f"frame {self._index} cannot be decoded")
        return np.asarray(image, dtype=np.uint8)

    def close(self) -> None:
        """Release the capture (and its connection)."""
        self._capture.release()


class FolderReader:
    """The images of a folder in name order, as the frames of one pass."""

    def __init__(self, files: list[Path]) -> None:
        self._files = files
        self._index = -1

    @classmethod
    def open(cls, folder: Path) -> FolderReader:
        """List the folder's images (sorted by name) once per pass."""
        try:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        except OSError as exc:
            raise SourceOpenError(f"{folder}: cannot list the folder: {exc}") from exc
        if not files:
            raise SourceOpenError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images in the folder")
        return cls(files)

    @property
    def native_fps(self) -> float | None:
        """Images carry no rate: a folder is paced at the camera's fps_cap."""
        return None

    def grab(self) -> int | None:
        """Next image's index in the sorted listing, None after the last."""
        if self._index + 1 >= len(self._files):
            return None
        self._index += 1
        return self._index

    def retrieve(self) -> NDArray[np.uint8]:
        """The current image, decoded; BadFrameError for an unreadable, truncated or corrupt file."""
        path = self._files[self._index]
        try:
            return decode_image(path.read_bytes(), str(path))
        except (OSError, ImageDecodeError) as exc:
            raise BadFrameError(str(exc)) from exc

    def close(self) -> None:
        """Nothing to release."""
