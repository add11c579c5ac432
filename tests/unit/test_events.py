"""edge/events.py: the track book's events written to a real JSON-lines file, counted and published."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.events import Event, EventSink
from edge.metrics import EdgeMetrics
from edge.track import TrackEvent


@pytest.fixture
def metrics() -> EdgeMetrics:
    return EdgeMetrics()


@pytest.fixture
def sink(tmp_path: Path, metrics: EdgeMetrics) -> Iterator[EventSink]:
    events = EventSink(tmp_path / "events" / "events.jsonl", metrics=metrics)
    yield events
    events.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def event(kind: str = "new", label: str = "person", frame_seq: int = 3) -> TrackEvent:
    payload = {
        "schema": 1,
        "type": kind,
        "id": "gw-1/cam-a/7",
        "edge_id": "gw-1",
        "camera": "cam-a",
        "track_id": "7",
        "label": label,
        "sub_label": None,
        "score": 0.9,
        "top_score": 0.9,
        "box": [1.0, 2.0, 30.0, 40.0],
        "frame_seq": frame_seq,
        "first_seen": 1000.0,
        "last_seen": 1000.0,
        "source": "edge",
        "verdict": None,
        "policy_version": 2,
    }
    return TrackEvent(kind, "cam-a", "7", payload, frame_seq)  # type: ignore[arg-type]


def test_an_event_is_one_json_line_logged_and_counted_by_label_and_type(
    sink: EventSink, metrics: EdgeMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="edge.events"):
        body = sink.emit(event(), snapshot=b"\xff\xd8jpeg")
    assert lines(sink.path) == [body]
    assert body["has_snapshot"] is True and body["type"] == "new" and body["id"] == "gw-1/cam-a/7"
    assert metrics.registry.get_sample_value("edgeglm_edge_local_events_total", {"label": "person", "type": "new"}) == 1
    assert "event new gw-1/cam-a/7 person" in caplog.text


def test_publish_hooks_receive_every_event_and_its_snapshot_even_when_one_fails(
    sink: EventSink, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[tuple[Event, bytes | None]] = []

    def broken(body: Event, snapshot: bytes | None) -> None:
        raise ConnectionError("broker away")

    sink.add_publisher(broken)
    sink.add_publisher(lambda body, snapshot: received.append((body, snapshot)))
    with caplog.at_level(logging.ERROR, logger="edge.events"):
        sink.emit(event(), snapshot=b"jpeg")
        sink.emit(event("end"))
    assert [(body["type"], snapshot) for body, snapshot in received] == [("new", b"jpeg"), ("end", None)]
    assert len(lines(sink.path)) == 2
    assert "broker away" in caplog.text


def test_file_rotates_by_size_and_keeps_whole_lines(tmp_path: Path, metrics: EdgeMetrics) -> None:
    path = tmp_path / "events.jsonl"
    sink = EventSink(path, metrics=metrics, max_bytes=1000, backup_count=2)
    for seq in range(20):
        sink.emit(event("update", frame_seq=seq))
    sink.close()
    rotated = tmp_path / "events.jsonl.1"
    assert rotated.exists() and path.stat().st_size <= 1000
    kept = lines(rotated) + lines(path)
    assert [e["frame_seq"] for e in kept] == list(range(20 - len(kept), 20))
