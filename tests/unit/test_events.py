"""edge/events.py: local events written to a real JSON-lines file, deduplicated, counted and published."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.detect import Detection
from edge.convert import EdgeVerdict
from edge.events import Event, EventSink
from edge.metrics import EdgeMetrics

MOTORCYCLE = Detection(box=(10.04, 20.0, 110.0, 90.0), score=0.91234, class_id=2, label="motorcycle")
PERSON = Detection(box=(200.0, 40.0, 240.0, 160.0), score=0.8, class_id=0, label="person")


@pytest.fixture
def metrics() -> EdgeMetrics:
    return EdgeMetrics()


@pytest.fixture
def sink(tmp_path: Path, metrics: EdgeMetrics) -> Iterator[EventSink]:
    events = EventSink(tmp_path / "events" / "events.jsonl", edge_id="gw-1", metrics=metrics, cooldown_s=5.0)
    yield events
    events.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def counted(metrics: EdgeMetrics, label: str) -> float:
    return metrics.registry.get_sample_value("edgeglm_edge_local_events_total", {"label": label}) or 0.0


def verdict(decision: str, *detections: Detection) -> EdgeVerdict:
    return EdgeVerdict(
        sample_id="s-1",
        decision=decision,  # type: ignore[arg-type]
        labels=tuple(sorted({d.label for d in detections})),
        backend="oracle",
        origin="backend",
        queue_ms=1.0,
        inference_ms=2.0,
        detections=detections,
    )


def test_confident_detection_becomes_one_json_line_with_the_documented_schema(
    sink: EventSink, metrics: EdgeMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="edge.events"):
        sink.emit("cam-a", MOTORCYCLE, frame_seq=12, captured_at=1000.5, policy_version=4)
    assert lines(sink.path) == [
        {
            "type": "detection",
            "edge_id": "gw-1",
            "camera_id": "cam-a",
            "label": "motorcycle",
            "score": 0.9123,
            "box": [10.0, 20.0, 110.0, 90.0],
            "frame_seq": 12,
            "captured_at": 1000.5,
            "policy_version": 4,
            "source": "edge",
        }
    ]
    assert counted(metrics, "motorcycle") == 1
    assert "event motorcycle" in caplog.text


def test_same_camera_and_label_stay_quiet_during_the_cooldown(sink: EventSink, metrics: EdgeMetrics) -> None:
    # A parked motorcycle at 5 frames/s for 12 s: one event per 5-second window.
    for seq in range(60):
        sink.emit("cam-a", MOTORCYCLE, frame_seq=seq, captured_at=1000.0 + seq * 0.2, policy_version=1)
    assert [e["frame_seq"] for e in lines(sink.path)] == [0, 25, 50]
    assert counted(metrics, "motorcycle") == 3


def test_other_labels_and_cameras_are_not_held_back(sink: EventSink) -> None:
    sink.emit("cam-a", MOTORCYCLE, 0, 1000.0, 1)
    sink.emit("cam-a", PERSON, 0, 1000.0, 1)
    sink.emit("cam-b", MOTORCYCLE, 0, 1000.0, 1)
    assert [(e["camera_id"], e["label"]) for e in lines(sink.path)] == [
        ("cam-a", "motorcycle"),
        ("cam-a", "person"),
        ("cam-b", "motorcycle"),
    ]


def test_zero_cooldown_records_every_frame(tmp_path: Path, metrics: EdgeMetrics) -> None:
    sink = EventSink(tmp_path / "events.jsonl", edge_id="gw-1", metrics=metrics, cooldown_s=0.0)
    for seq in range(3):
        sink.emit("cam-a", PERSON, seq, 1000.0 + seq * 0.2, 1)
    sink.close()
    assert len(lines(tmp_path / "events.jsonl")) == 3


def test_confirmed_verdict_records_the_clouds_best_detection_per_label(sink: EventSink) -> None:
    weaker = Detection(box=(0.0, 0.0, 5.0, 5.0), score=0.6, class_id=0, label="person")
    events = sink.verdict("cam-a", 40, 1008.0, verdict("confirmed", weaker, PERSON, MOTORCYCLE), policy_version=2)
    assert [(e["label"], e["score"], e["source"], e["frame_seq"]) for e in events] == [
        ("motorcycle", 0.9123, "cloud", 40),
        ("person", 0.8, "cloud", 40),
    ]
    assert lines(sink.path) == events


@pytest.mark.parametrize("decision", ["rejected", "unsure"])
def test_verdicts_other_than_confirmed_make_no_event(sink: EventSink, decision: str) -> None:
    assert sink.verdict("cam-a", 40, 1008.0, verdict(decision, PERSON), policy_version=2) == []
    assert not sink.path.exists() or sink.path.read_text() == ""


def test_cloud_confirmation_within_the_cooldown_of_a_local_event_is_not_repeated(sink: EventSink) -> None:
    sink.emit("cam-a", PERSON, 10, 1000.0, 1)
    assert sink.verdict("cam-a", 12, 1000.4, verdict("confirmed", PERSON), policy_version=1) == []
    assert len(lines(sink.path)) == 1


def test_publish_hooks_receive_every_event_even_when_one_fails(
    sink: EventSink, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Event] = []

    def broken(event: Event) -> None:
        raise ConnectionError("broker away")

    sink.add_publisher(broken)
    sink.add_publisher(received.append)
    with caplog.at_level(logging.ERROR, logger="edge.events"):
        sink.emit("cam-a", PERSON, 0, 1000.0, 1)
    assert [e["label"] for e in received] == ["person"]
    assert len(lines(sink.path)) == 1
    assert "broker away" in caplog.text


def test_file_rotates_by_size_and_keeps_whole_lines(tmp_path: Path, metrics: EdgeMetrics) -> None:
    path = tmp_path / "events.jsonl"
    sink = EventSink(path, edge_id="gw-1", metrics=metrics, cooldown_s=0.0, max_bytes=1000, backup_count=2)
    for seq in range(20):
        sink.emit("cam-a", PERSON, seq, 1000.0 + seq, 1)
    sink.close()
    rotated = tmp_path / "events.jsonl.1"
    assert rotated.exists() and path.stat().st_size <= 1000
    kept = lines(rotated) + lines(path)
    assert [e["frame_seq"] for e in kept] == list(range(20 - len(kept), 20))
    assert counted(metrics, "person") == 20
