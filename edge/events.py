"""Local events: one `new`, some `update`s and one `end` per tracked object, for people and home automation.

The events themselves are made by the track book (`edge.track.book`, schema in docs/events.md):
this sink writes each as a JSON line to a size-rotated file, logs it, counts it in
`local_events{label, type}`, and hands it to every publish hook (the MQTT transport adds itself
there to publish on `edgeglm/{edge}/events`, with the object's snapshot retained per camera and
label). Writes are small appends, made on the caller's thread.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from common.detect import Detection
from edge.convert import crop_box
from edge.metrics import EdgeMetrics
from edge.track.book import TrackEvent

logger = logging.getLogger(__name__)
SNAPSHOT_QUALITY = 80  # JPEG quality of event snapshots

Event = dict[str, Any]
# (the event's JSON body, a JPEG snapshot of the object or None)
Publisher = Callable[[Event, bytes | None], None]


def snapshot_jpeg(image: NDArray[np.uint8], event: TrackEvent) -> bytes | None:
    """A JPEG of the event's object, its box padded as a sample's crop is (blocking: run it off the loop)."""
    box = event.payload["box"]
    height, width = image.shape[:2]
    crop = crop_box((width, height), [Detection((box[0], box[1], box[2], box[3]), 1.0, 0, "")])
    x1, y1, x2, y2 = crop if crop is not None else (0, 0, width, height)
    ok, buffer = cv2.imencode(".jpg", image[y1:y2, x1:x2], [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
    return buffer.tobytes() if ok else None


class EventSink:
    """Writes, logs, counts and publishes the track book's events."""

    def __init__(
        self,
        path: Path,
        *,
        metrics: EdgeMetrics,
        max_bytes: int = 10 << 20,
        backup_count: int = 3,
    ) -> None:
        self.path = path
        self.publishers: list[Publisher] = []
        self._metrics = metrics
        path.parent.mkdir(parents=True, exist_ok=True)
        # The logging module's rotating handler already rotates by size safely across threads.
        self._file = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=True
        )
        self._file.setFormatter(logging.Formatter("%(message)s"))

    def add_publisher(self, publisher: Publisher) -> None:
        """Also hand every event to `publisher` (e.g. the MQTT transport)."""
        self.publishers.append(publisher)

    def emit(self, event: TrackEvent, snapshot: bytes | None = None) -> Event:
        """Record one event (with the object's JPEG `snapshot`, when there is one); returns its body."""
        body = dict(event.payload, has_snapshot=snapshot is not None)
        line = json.dumps(body, separators=(",", ":"))
        self._file.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))
        logger.info(
            "event %s %s %s %.2f on %s (%s%s)",
            body["type"],
            body["id"],
            body["label"],
            body["score"],
            body["camera"],
            body["source"],
            f", {body['verdict']}" if body.get("verdict") else "",
        )
        self._metrics.local_events.labels(body["label"], body["type"]).inc()
        for publish in self.publishers:
            try:
                publish(body, snapshot)
            except Exception:  # one failing transport must not stop the file, the log or the others
                logger.exception("event publisher %r failed on the %s event of %s", publish, body["type"], body["id"])
        return body

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
