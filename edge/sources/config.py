"""Configuration of one camera (an entry of the `cameras` list in edge.yaml)."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SourceKind = Literal["network", "path"]
"""`network`: an RTSP/HTTP stream; `path`: a video file or a folder of images (decided when opened)."""

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
# A scheme is two or more characters, so that a Windows drive letter ("C:\clips") reads as a path.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


class CameraConfig(BaseModel):
    """One camera: where its frames come from, how fast, and how its watchdog reconnects it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., min_length=1, max_length=64, description="Camera id, unique on this edge (A-Z a-z 0-9 _ . -).")
    url: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        description="rtsp://host/path, http(s)://host/path (MJPEG), a video file, or a folder of JPEG/PNG frames.",
    )
    fps_cap: float = Field(
        5.0,
        ge=0.1,
        le=120.0,
        description="Most frames per second passed on; faster live frames are skipped, files are paced at it.",
    )
    queue_size: int = Field(
        4, ge=1, le=256, description="Frames waiting for the consumer; when full the oldest is dropped."
    )
    loop: bool = Field(False, description="Replay a video file or folder forever instead of ending.")
    realtime: bool = Field(
        True,
        description="Pace a file/folder at fps_cap like a live camera; false: as fast as it is consumed (benchmarks).",
    )
    timeline: Literal["wall", "recording"] = Field(
        "wall",
        description="Capture times of a file/folder: wall (when read), or recording (playback start plus the frame's "
        "place in the file); with recording no frame is dropped when the pipeline falls behind: playback slows "
        "instead, so what is detected and decided does not depend on the machine's load (the simulation's clips).",
    )
    stall_timeout_s: float = Field(
        10.0, ge=0.1, le=3600.0, description="No frame from a live camera for this long: reconnect it."
    )
    backoff_initial_s: float = Field(
        0.5, ge=0.01, le=600.0, description="Ceiling of the first reconnect delay (full jitter below it)."
    )
    backoff_max_s: float = Field(30.0, ge=0.01, le=3600.0, description="Cap of the reconnect delay.")
    open_timeout_s: float = Field(10.0, ge=0.1, le=600.0, description="Longest wait to open a network camera.")

    @property
    def lossless(self) -> bool:
        """Whether every frame read is passed on, waiting for the consumer (files not paced, or on their timeline)."""
        return source_kind(self.url) != "network" and (not self.realtime or self.timeline == "recording")

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"{value!r} is not a valid camera id (use letters, digits, _ . -)")
        return value

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        source_kind(value)
        return value

    @model_validator(mode="after")
    def _backoff_ordered(self) -> CameraConfig:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(
                f"backoff_initial_s ({self.backoff_initial_s}) must not exceed backoff_max_s ({self.backoff_max_s})"
            )
        return self


def source_kind(url: str) -> SourceKind:
    """The kind of source `url` names; ValueError saying the expected form when it is malformed."""
    if url != url.strip():
        raise ValueError(f"{url!r} has leading or trailing spaces")
    match = _SCHEME.match(url)
    if match is None:
        return "path"
    scheme = match.group(1).lower()
    if scheme not in NETWORK_SCHEMES:
        if "://" in url:
            raise ValueError(
                f"{url!r} has an unsupported scheme {scheme!r} (expected rtsp://, http://, https:// or a file path)"
            )
        return "path"
    parts = urlsplit(url)
    if not url[len(scheme) + 1 :].startswith("//") or not parts.hostname:
        raise ValueError(f"{url!r} is not a valid URL (expected {scheme}://host/path)")
    try:
        parts.port  # noqa: B018 -- urlsplit checks the port lazily, on access
    except ValueError as exc:
        raise ValueError(f"{url!r} has an invalid port (expected {scheme}://host:port/path)") from exc
    return "network"


def redact(url: str) -> str:
    """`url` with any password replaced, for logs and errors (rtsp://admin:***@host/...)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
