"""How well an edge's events tell a camera's story: objects recalled, false alarms, per-object F1.

The edge reports tracked objects (docs/events.md, schema 1): each event `id` is one object as the
edge saw it, with a `new`, perhaps `update`s, and an `end`. Against a clip's ground truth
(`gt.jsonl`: every object's box on every frame; `events.json`: every object's span):

- An event track is *explained* by a world object when, on the frame of one of its events, that
  object is in view with the track's final label and a box overlapping the event's (IoU >= 0.3).
  The final label is the one its last event gives: the cloud may have corrected the edge's.
- A track whose last verdict is `rejected` was withdrawn by the cloud: it counts neither as a
  detection nor as a false alarm (a consumer drops it on that update).
- Object recall: the share of the world's objects explained by at least one event track.
- Event precision: the share of the (not withdrawn) event tracks some object explains; a false
  alarm is a track no object explains.
- Per-object F1: the harmonic mean of the two.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.boxes import Box, iou

MATCH_IOU = 0.3


@dataclass
class EventTrack:
    """One tracked object as its events told it."""

    event_id: str
    camera: str
    label: str = ""
    withdrawn: bool = False
    sightings: list[tuple[int, Box]] = field(default_factory=list)  # (frame_seq, box) of each event


@dataclass(frozen=True)
class TruthObject:
    """One object of the world's clip: its label, span and box per frame."""

    track: int
    label: str
    watched: bool
    boxes: dict[int, Box]


@dataclass(frozen=True)
class EventScore:
    """Recall, precision and F1 over a set of cameras, with their counts."""

    objects: int
    recalled: int
    watched: int
    watched_recalled: int
    tracks: int
    explained_tracks: int
    withdrawn_tracks: int

    @property
    def recall(self) -> float | None:
        """Objects explained by some event track."""
        return self.recalled / self.objects if self.objects else None

    @property
    def watched_recall(self) -> float | None:
        """The same, over watch-listed objects only."""
        return self.watched_recalled / self.watched if self.watched else None

    @property
    def precision(self) -> float | None:
        """Event tracks that some object explains."""
        return self.explained_tracks / self.tracks if self.tracks else None

    @property
    def f1(self) -> float | None:
        """Harmonic mean of object recall and event precision."""
        p, r = self.precision, self.recall
        if p is None or r is None or p + r == 0:
            return None if p is None or r is None else 0.0
        return 2 * p * r / (p + r)


def event_tracks(events: Iterable[Mapping[str, Any]]) -> dict[str, list[EventTrack]]:
    """An edge's events (schema 1) folded into one record per object, grouped by camera."""
    tracks: dict[str, EventTrack] = {}
    for event in events:
        if event.get("schema") != 1 or event.get("type") not in ("new", "update", "end"):
            continue
        event_id = str(event["id"])
        track = tracks.setdefault(event_id, EventTrack(event_id, str(event["camera"])))
        track.label = str(event["label"])
        track.withdrawn = event.get("verdict") == "rejected"
        box = event["box"]
        track.sightings.append((int(event["frame_seq"]), (box[0], box[1], box[2], box[3])))
    grouped: dict[str, list[EventTrack]] = defaultdict(list)
    for track in tracks.values():
        grouped[track.camera].append(track)
    return grouped


def truth_objects(clip: Path) -> list[TruthObject]:
    """The objects of a clip with their box on every frame they are in view."""
    boxes: dict[int, dict[int, Box]] = defaultdict(dict)
    for line in (clip / "gt.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        for obj in record.get("objects", []):
            b = obj["box"]
            boxes[int(obj["track"])][int(record["frame"])] = (b[0], b[1], b[2], b[3])
    return [
        TruthObject(int(e["track"]), str(e["label"]), bool(e["watched"]), boxes.get(int(e["track"]), {}))
        for e in json.loads((clip / "events.json").read_text())
    ]


def explains(obj: TruthObject, track: EventTrack) -> bool:
    """Whether the world object is what the event track reported, on one of its events' frames."""
    if obj.label != track.label:
        return False
    return any(frame in obj.boxes and iou(obj.boxes[frame], box) >= MATCH_IOU for frame, box in track.sightings)


def score_camera(objects: list[TruthObject], tracks: list[EventTrack]) -> EventScore:
    """Recall, precision and their counts on one camera."""
    live = [t for t in tracks if not t.withdrawn]
    recalled = [o for o in objects if any(explains(o, t) for t in live)]
    explained = [t for t in live if any(explains(o, t) for o in objects)]
    return EventScore(
        objects=len(objects),
        recalled=len(recalled),
        watched=sum(o.watched for o in objects),
        watched_recalled=sum(o.watched for o in recalled),
        tracks=len(live),
        explained_tracks=len(explained),
        withdrawn_tracks=len(tracks) - len(live),
    )


def add(scores: Iterable[EventScore]) -> EventScore:
    """The sum of several cameras' counts."""
    total = EventScore(0, 0, 0, 0, 0, 0, 0)
    for s in scores:
        total = EventScore(
            total.objects + s.objects,
            total.recalled + s.recalled,
            total.watched + s.watched,
            total.watched_recalled + s.watched_recalled,
            total.tracks + s.tracks,
            total.explained_tracks + s.explained_tracks,
            total.withdrawn_tracks + s.withdrawn_tracks,
        )
    return total
