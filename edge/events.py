"""Local events: what the edge is sure of (or the cloud confirmed), for people and home automation.

Each event is one JSON object, written as a line to a size-rotated file, logged, counted in
`local_events{label}`, and handed to every publish hook (the MQTT transport adds itself there to
publish on `edgeglm/{edge}/events`). Schema, stable for consumers:

    {"type": "detection", "edge_id": str, "camera_id": str, "label": str, "score": float,
     "box": [x1, y1, x2, y2], "frame_seq": int, "captured_at": float (unix seconds),
     "policy_version": int, "source": "edge" | "cloud"}

`box` is in original-frame pixels; `source` says whether the edge was confident on its own or the
cloud confirmed a sample the edge was unsure of. One object stays in view for many frames, so events
are deduplicated per (camera, label): after an event, the same camera and label stay quiet for
`cooldown_s` seconds of capture time (a parked motorcycle fires once per window, not at the frame
rate). Capture time, not the wall clock, keeps replays and late cloud confirmations consistent.

Writes are small appends, made on the caller's thread.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from common.detect import Detection
from edge.convert import EdgeVerdict
from edge.metrics import EdgeMetrics

logger = logging.getLogger(__name__)

EventSource = Literal["edge", "cloud"]
Event = dict[str, Any]
Publisher = Callable[[Event], None]


class EventSink:
    """Writes, logs, counts and publishes local events, one per (camera, label) per cool-down window."""

    def __init__(
        self,
        path: Path,
        *,
        edge_id: str,
        metrics: EdgeMetrics,
        cooldown_s: float = 5.0,
        max_bytes: int = 10 << 20,
        backup_count: int = 3,
    ) -> None:
        self.path = path
        self.edge_id = edge_id
        self.cooldown_s = cooldown_s
        self.publishers: list[Publisher] = []
        self._metrics = metrics
        self._last: dict[tuple[str, str], float] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        # The logging module's rotating handler already rotates by size safely across threads.
        self._file = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=True
        )
        self._file.setFormatter(logging.Formatter("%(message)s"))

    def add_publisher(self, publisher: Publisher) -> None:
        """Also hand every event to `publisher` (e.g. the MQTT transport)."""
        self.publishers.append(publisher)

    def emit(
        self,
        camera_id: str,
        detection: Detection,
        frame_seq: int,
        captured_at: float,
        policy_version: int,
        source: EventSource = "edge",
    ) -> Event | None:
        """Record one confident detection; returns the event, or None when the cool-down swallowed it."""
        key = (camera_id, detection.label)
        last = self._last.get(key)
        if last is not None and abs(captured_at - last) < self.cooldown_s:
            return None
        self._last[key] = captured_at
        event: Event = {
            "type": "detection",
            "edge_id": self.edge_id,
            "camera_id": camera_id,
            "label": detection.label,
            "score": round(float(detection.score), 4),
            "box": [round(float(v), 1) for v in detection.box],
            "frame_seq": frame_seq,
            "captured_at": captured_at,
            "policy_version": policy_version,
            "source": source,
        }
        self._write(event)
        return event

    def verdict(
        self, camera_id: str, frame_seq: int, captured_at: float, verdict: EdgeVerdict, policy_version: int
    ) -> list[Event]:
        """Events for what the cloud confirmed (its best detection per label); other decisions make none."""
        if verdict.decision != "confirmed":
            logger.debug("verdict %s on %s: %s, no event", verdict.decision, verdict.sample_id, camera_id)
            return []
        best: dict[str, Detection] = {}
        for detection in verdict.detections:
            if detection.label not in best or detection.score > best[detection.label].score:
                best[detection.label] = detection
        if not best:
            logger.info("verdict on %s confirmed without any labelled detection: no event", verdict.sample_id)
        events = []
        for label in sorted(best):
            event = self.emit(camera_id, best[label], frame_seq, captured_at, policy_version, source="cloud")
            if event is not None:
                events.append(event)
        return events

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()

    def _write(self, event: Event) -> None:
        line = json.dumps(event, separators=(",", ":"))
        self._file.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))
        logger.info(
            "event %s %.2f on %s frame %d (%s)",
            event["label"],
            event["score"],
            event["camera_id"],
            event["frame_seq"],
            event["source"],
        )
        self._metrics.local_events.labels(event["label"]).inc()
        for publish in self.publishers:
            try:
                publish(event)
            except Exception:  # one failing transport must not stop the file, the log or the others
                logger.exception("event publisher %r failed on %s event", publish, event["label"])
