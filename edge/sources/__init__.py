"""The sources stage: frames from RTSP/HTTP cameras, video files and image folders, with a watchdog."""

from edge.sources.camera import CameraSource, open_sources, stop_sources
from edge.sources.config import CameraConfig, SourceKind, source_kind
from edge.sources.frame import Frame, SourceState

__all__ = [
    "CameraConfig",
    "CameraSource",
    "Frame",
    "SourceKind",
    "SourceState",
    "open_sources",
    "source_kind",
    "stop_sources",
]
