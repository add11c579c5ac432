"""Objects, not frames: a tracker per camera, and the book of what each tracked object asked and was told."""

from edge.track.book import AskRequest, TrackBook, TrackEvent
from edge.track.tracker import CameraTracker, Tracked

__all__ = ["AskRequest", "CameraTracker", "TrackBook", "TrackEvent", "Tracked"]
