"""The book of tracked objects: when a track asks the cloud, what its verdict does, and its events.

One question per object. The miner still says whether a frame is hard (its strategies are frame
rules); the book turns that into questions about objects:

- A hard frame asks about its hard tracks: the tracks whose detection made it hard (in their band
  for the band, IBT and cross-entropy rules; of a watched label for the watch list; every track of
  the frame for an audit). A track asks once; again only when its label changed since it asked,
  when its answer was `unsure` and the policy's `resend_interval_s` has passed (capture time), when
  it is of a watched label, was confirmed, and the policy's `watch_reask_interval_s` has passed, and
  never more than `max_asks` times. A track that is waiting for its answer does not ask again.
- A track that turns hard is asked about with its best frame of the next `ask_window_s` (capture
  time): the one where its box scores highest times the square root of its area (a large, clear
  view), so the cloud judges the object at its most legible rather than at its first glimpse.
- Motion without any detection is asked once per moving region: a change that overlaps, or comes
  within half its size of, a region asked about while motion goes on there (within `lost_after_s`)
  is held back, and the region follows it (a thing moving across the view is one question). The
  question names the region (`motion-N`, as its track_id); what the cloud finds there is one object.
- Watch rules in plain words (`MiningPolicy.watch_rules`) are track rules, not frame rules: a track
  that is a candidate of a rule (its label, its box's bottom centre in the rule's zone) asks about the
  rule once, with its best frame of the window like every question (reason `watch_rule`, or the
  reason of a question it asks anyway: one sample asks both); again only while the answer is
  `unsure` and `resend_interval_s` has passed, within `max_asks`. The sample names the rules
  (`AskRequest.rule_ids`).
- In `per_frame` mode (the baselines that ask per frame, as Sedna does) the book asks nothing itself:
  the caller sends frames and tells the book which tracks each showed (`sent_frame`); watch rules are
  not asked.

What a verdict does (`apply_verdict`), to the whole track:
- confirmed: the track's events carry the cloud's label (and the VLM's description as
  `sub_label`); a track not announced yet gets its `new` now, one announced gets an `update`.
- rejected: the track is suppressed: no more local events, no more questions; one announced
  already gets an `update` saying so (consumers withdraw it). One never announced stays silent.
- unsure: nothing changes; the track may ask again after the policy's interval.
- whatever the decision but rejected, a rule answered `matched` joins the track's `rules` (id, text,
  severity, the model's reason), and the track's event says so: its `new` if it was not announced
  yet, else an `update`.

Events, per tracked object (schema in docs/events.md, `EVENT_SCHEMA`): `new` when the edge is sure
of it (at once: a confident detection does not wait for the cloud) or when the cloud confirmed it;
`update` when its label changes or a verdict arrives; `end` when it has not been detected for
`lost_after_s` of capture time. A track never has two `new`s.

Pure logic on capture times: no clock, no I/O; the agent owns the tracker, the frames and the sink.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from common.boxes import area, intersection
from common.detect import Detection
from edge.convert import EdgeVerdict
from edge.mine.base import MiningDecision
from edge.policy.settings import MiningPolicy
from edge.track.rules import TrackRules
from edge.track.tracker import Tracked
from protos.reasons import MinedReasonName

F = TypeVar("F")  # whatever the caller keeps of a frame (the agent: the frame and its gate result)
AskMode = Literal["per_track", "per_frame"]
EventKind = Literal["new", "update", "end"]
TrackVerdict = Literal["confirmed", "rejected", "unsure"]
EVENT_SCHEMA = 1  # bumped when a field changes meaning or goes; new fields may be added within a version
# Verdicts of these backends carry a description worth showing as the object's sub_label.
DESCRIBING_BACKENDS = frozenset({"glm", "openai"})
ENDED_KEPT = 2048  # ended tracks remembered for late verdicts, per book (the oldest forgotten first)
MOTION_REGION_REACH = 0.5  # a change within half its region's size of an asked region is the same motion
HELD_TRACK_ASKED = "track_asked"
HELD_MOTION_ASKED = "motion_region_asked"
MOTION_PREFIX = "motion-"  # the track_id of a question about a moving region with no detection
# A question about a watch rule goes ahead of band doubts, behind the watch list (edge.mine.strategies'
# priorities): the operator wrote the rule.
RULE_PRIORITY = 0.85


@dataclass(frozen=True, slots=True)
class TrackEvent:
    """One event of a tracked object; `payload` is its JSON body (docs/events.md)."""

    kind: EventKind
    camera_id: str
    track_id: str
    payload: dict[str, Any]
    frame_seq: int  # the frame `payload["box"]` is on, for a snapshot


@dataclass(frozen=True, slots=True)
class AskRequest(Generic[F]):
    """A question for the cloud: this frame, about this track (None: about the frame's motion or all of it).

    `rule_ids` are the watch rules the question asks as well (or only, when `reason` is watch_rule).
    """

    camera_id: str
    track_id: str | None
    frame: F
    detections: tuple[Detection, ...]
    reason: MinedReasonName
    detail: str
    priority: float
    rule_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FrameOutcome(Generic[F]):
    """What one frame produced: events to emit, questions to send, and why a hard frame asked nothing."""

    events: list[TrackEvent]
    asks: list[AskRequest[F]]
    held_back: str | None = None


@dataclass(slots=True)
class _Candidate(Generic[F]):
    frame: F
    detection: Detection
    reason: MinedReasonName
    detail: str
    priority: float
    quality: float


@dataclass(slots=True)
class _Track(Generic[F]):
    track_id: str
    camera_id: str
    label: str
    score: float
    top_score: float
    box: tuple[float, float, float, float]
    frame_seq: int
    first_seen: float
    last_seen: float
    sub_label: str | None = None
    source: Literal["edge", "cloud"] = "edge"
    verdict: TrackVerdict | None = None
    announced: bool = False
    asks: int = 0
    asked_label: str | None = None
    asked_at: float = -math.inf
    waiting: bool = False
    window_opened: float | None = None
    best: _Candidate[F] | None = None
    rules: TrackRules = field(default_factory=TrackRules)

    @classmethod
    def first(cls, track_id: str, camera_id: str, detection: Detection, frame_seq: int, at: float) -> _Track[F]:
        """A track as its first detection shows it."""
        score = detection.score
        return cls(track_id, camera_id, detection.label, score, score, detection.box, frame_seq, at, at)


@dataclass(slots=True)
class _Camera(Generic[F]):
    tracks: dict[str, _Track[F]] = field(default_factory=dict)
    # moving regions asked about: (box, last seen moving, region id)
    motion: list[tuple[tuple[float, float, float, float], float, str]] = field(default_factory=list)
    regions: int = 0


class TrackBook(Generic[F]):
    """Every camera's tracked objects on one edge."""

    def __init__(
        self,
        edge_id: str,
        *,
        lost_after_s: float,
        ask_window_s: float,
        max_asks: int,
        mode: AskMode = "per_track",
    ) -> None:
        self.edge_id = edge_id
        self.lost_after_s = lost_after_s
        self.ask_window_s = ask_window_s
        self.max_asks = max_asks
        self.mode: AskMode = mode
        self.policy_version = 0
        self._cameras: dict[str, _Camera[F]] = {}
        self._ended: OrderedDict[tuple[str, str], _Track[F]] = OrderedDict()
        self._sent_frames: OrderedDict[tuple[str, int], tuple[tuple[str, str], ...]] = OrderedDict()

    # ------------------------------------------------------------------ frames

    def observe(
        self,
        camera_id: str,
        frame_seq: int,
        captured_at: float,
        tracked: Sequence[Tracked],
        decision: MiningDecision,
        policy: MiningPolicy,
        frame: F,
        motion_box: tuple[int, int, int, int] | None = None,
        frame_size: tuple[int, int] = (0, 0),
    ) -> FrameOutcome[F]:
        """One detected frame of `camera_id`: update its tracks, announce the sure ones, ask about the hard ones.

        `policy` is the camera's (`MiningPolicy.for_camera`); `frame_size` (width, height) places the
        watch rules' zones."""
        camera = self._cameras.setdefault(camera_id, _Camera())
        events: list[TrackEvent] = []
        asks: list[AskRequest[F]] = []
        for item in tracked:
            track = self._see(camera, camera_id, item, frame_seq, captured_at, events)
            detection = item.detection
            sure = detection.score > policy.band_for(detection.label).high
            if sure and not track.announced and track.verdict != "rejected":
                track.announced = True
                events.append(self._event("new", track))
        held_back = None
        if decision.kind == "suspicious" and decision.reason is not None and self.mode == "per_track":
            held_back = self._ask_hard(
                camera, camera_id, captured_at, tracked, decision, policy, frame, motion_box, asks
            )
        if self.mode == "per_track" and policy.watch_rules:
            self._ask_rules(camera, captured_at, tracked, policy, frame, frame_size)
        asks.extend(self._close_windows(camera, captured_at))
        events.extend(self._end_lost(camera, captured_at, asks))
        return FrameOutcome(events, asks, held_back)

    def tick(self, camera_id: str, captured_at: float) -> FrameOutcome[F]:
        """A frame of `camera_id` with nothing new to detect (the gate skipped it): tracks age and may end."""
        camera = self._cameras.get(camera_id)
        if camera is None:
            return FrameOutcome([], [])
        asks = self._close_windows(camera, captured_at)
        events = self._end_lost(camera, captured_at, asks)
        return FrameOutcome(events, asks)

    def end_all(self) -> FrameOutcome[F]:
        """Shutdown: every open question window asks now and every live track ends."""
        events: list[TrackEvent] = []
        asks: list[AskRequest[F]] = []
        for camera in self._cameras.values():
            asks.extend(self._close_windows(camera, math.inf))
            events.extend(self._end_lost(camera, math.inf, asks))
        return FrameOutcome(events, asks)

    def sent_frame(self, camera_id: str, frame_seq: int, tracked: Sequence[Tracked]) -> None:
        """per_frame mode: the frame went up showing these tracks; its verdict applies to them by label."""
        self._sent_frames[(camera_id, frame_seq)] = tuple((t.track_id, t.detection.label) for t in tracked)
        while len(self._sent_frames) > ENDED_KEPT:
            self._sent_frames.popitem(last=False)

    def asked(self, request: AskRequest[F], captured_at: float) -> None:
        """The question `request` is on its way (stored in the outbox): the track waits for its answer."""
        if request.track_id is None:
            return
        track = self._find(request.camera_id, request.track_id)
        if track is None:
            return
        track.asks += 1
        track.asked_label = track.label
        track.asked_at = captured_at
        track.waiting = True
        track.rules.sent(request.rule_ids, captured_at)

    # ---------------------------------------------------------------- verdicts

    def apply_verdict(
        self,
        camera_id: str,
        track_id: str,
        verdict: EdgeVerdict,
        *,
        frame_seq: int,
        captured_at: float,
        asked_about: Detection | None,
    ) -> list[TrackEvent]:
        """A verdict on a sample about `track_id` ("" for none): the events it makes, for the whole track."""
        if not track_id or track_id.startswith(MOTION_PREFIX):
            return self._frame_verdict(camera_id, frame_seq, captured_at, verdict, track_id or None)
        track = self._find(camera_id, track_id)
        if track is None:
            if asked_about is None:
                return []
            # The track is gone from memory (a restart): the verdict still counts for the object it asked about.
            track = self._orphan(camera_id, track_id, asked_about, frame_seq, captured_at)
        track.waiting = False
        return self._judge(track, verdict)

    def _frame_verdict(
        self, camera_id: str, frame_seq: int, captured_at: float, verdict: EdgeVerdict, region: str | None
    ) -> list[TrackEvent]:
        """A verdict on a whole frame (per_frame mode, an empty audit) or on a moving region: confirmed labels
        confirm the tracks the frame showed; what the cloud found that no track explains is an object of its
        own, one per moving region (its later verdicts update it)."""
        if verdict.decision != "confirmed":
            return []
        shown = self._sent_frames.pop((camera_id, frame_seq), ())
        events: list[TrackEvent] = []
        confirmed = set(verdict.labels)
        explained: set[str] = set()
        for track_id, label in shown:
            track = self._find(camera_id, track_id)
            if track is not None and label in confirmed and track.verdict != "rejected":
                explained.add(label)
                events.extend(self._judge(track, verdict))
        found = sorted((d for d in verdict.detections if d.label not in explained), key=lambda d: -d.score)
        if region is not None:
            found = found[:1]  # one moving region, one object: the cloud's best view of it
        for detection in found:
            if detection.label in explained:
                continue
            # Something the edge did not track (motion without detection, a miss): an object of its own.
            explained.add(detection.label)
            name = region or f"cloud-{frame_seq}-{detection.label}"
            track = self._find(camera_id, name) or self._orphan(camera_id, name, detection, frame_seq, captured_at)
            if track.announced:  # the region asked again and the cloud saw it again: where it is now
                track.label, track.box, track.frame_seq = detection.label, detection.box, frame_seq
                track.last_seen = max(track.last_seen, captured_at)
            events.extend(self._judge(track, verdict))
        return events

    def _judge(self, track: _Track[F], verdict: EdgeVerdict) -> list[TrackEvent]:
        matched = track.rules.answered(verdict)
        if verdict.decision == "unsure":
            track.verdict = "unsure" if track.verdict is None else track.verdict
            if not matched:
                return []
            if track.announced:
                return [self._event("update", track)]
            track.announced = True
            return [self._event("new", track)]
        ended = (track.camera_id, track.track_id) in self._ended
        if verdict.decision == "rejected":
            track.verdict = "rejected"
            track.best = track.window_opened = None
            track.rules.take_window()
            return [self._event("update", track)] if track.announced else []
        track.verdict = "confirmed"
        track.source = "cloud"
        same = [d for d in verdict.detections if d.label == track.label]
        if same:
            best = max(same, key=lambda d: d.score)
            track.score = best.score
            track.top_score = max(track.top_score, best.score)
        if verdict.backend in DESCRIBING_BACKENDS and verdict.text:
            track.sub_label = verdict.text
        if track.announced:
            return [self._event("update", track)]
        track.announced = True
        events = [self._event("new", track)]
        if ended:
            events.append(self._event("end", track))
        return events

    def _ask_rules(
        self,
        camera: _Camera[F],
        captured_at: float,
        tracked: Sequence[Tracked],
        policy: MiningPolicy,
        frame: F,
        frame_size: tuple[int, int],
    ) -> None:
        """Open (or join) the question window of each track that is a candidate of a rule it has not asked."""
        for item in tracked:
            track = camera.tracks[item.track_id]
            if track.verdict == "rejected" or track.waiting or track.asks >= self.max_asks:
                continue
            detection = item.detection
            due = track.rules.due(policy, detection, frame_size, captured_at)
            if not due:
                continue
            track.rules.join(due)
            quality = detection.score * math.sqrt(max(0.0, area(detection.box)))
            if track.best is None or (track.best.reason == "watch_rule" and quality > track.best.quality):
                ids = ", ".join(sorted(track.rules.window))
                detail = f"watch rule {ids}: {detection.label} {detection.score:.2f} (track {track.track_id})"
                track.best = _Candidate(frame, detection, "watch_rule", detail, RULE_PRIORITY, quality)
            if track.window_opened is None:
                track.window_opened = captured_at

    # ---------------------------------------------------------------- internals

    def _see(
        self,
        camera: _Camera[F],
        camera_id: str,
        item: Tracked,
        frame_seq: int,
        captured_at: float,
        events: list[TrackEvent],
    ) -> _Track[F]:
        detection = item.detection
        track = camera.tracks.get(item.track_id)
        if track is None:
            # An ended track the tracker kept alive a little longer comes back as the same object.
            track = self._ended.pop((camera_id, item.track_id), None) or _Track.first(
                item.track_id, camera_id, detection, frame_seq, captured_at
            )
            camera.tracks[item.track_id] = track
        relabelled = detection.label != track.label and track.source == "edge"
        if relabelled:
            track.label = detection.label
        track.score = detection.score
        track.top_score = max(track.top_score, detection.score)
        track.box = detection.box
        track.frame_seq = frame_seq
        track.last_seen = max(track.last_seen, captured_at)
        if relabelled and track.announced and track.verdict != "rejected":
            events.append(self._event("update", track))
        return track

    def _ask_hard(
        self,
        camera: _Camera[F],
        camera_id: str,
        captured_at: float,
        tracked: Sequence[Tracked],
        decision: MiningDecision,
        policy: MiningPolicy,
        frame: F,
        motion_box: tuple[int, int, int, int] | None,
        asks: list[AskRequest[F]],
    ) -> str | None:
        assert decision.reason is not None
        hard = _hard_tracks(decision.reason, tracked, policy)
        if not hard:
            if tracked and decision.reason != "random_audit":
                return HELD_TRACK_ASKED
            return self._ask_frame(camera, camera_id, captured_at, decision, frame, motion_box, asks)
        opened = False
        for item in hard:
            track = camera.tracks[item.track_id]
            if not self._may_ask(track, captured_at, policy):
                continue
            opened = True
            detection = item.detection
            quality = detection.score * math.sqrt(max(0.0, area(detection.box)))
            if track.best is None or quality > track.best.quality:
                detail = f"{decision.detail} (track {track.track_id})"
                track.best = _Candidate(frame, detection, decision.reason, detail, decision.priority, quality)
            if track.window_opened is None:
                track.window_opened = captured_at
        return None if opened else HELD_TRACK_ASKED

    def _ask_frame(
        self,
        camera: _Camera[F],
        camera_id: str,
        captured_at: float,
        decision: MiningDecision,
        frame: F,
        motion_box: tuple[int, int, int, int] | None,
        asks: list[AskRequest[F]],
    ) -> str | None:
        assert decision.reason is not None
        if decision.reason == "motion_without_detection" and motion_box is not None:
            box = (float(motion_box[0]), float(motion_box[1]), float(motion_box[2]), float(motion_box[3]))
            camera.motion = [m for m in camera.motion if captured_at - m[1] <= self.lost_after_s]
            for i, (region, _, name) in enumerate(camera.motion):
                if _near(region, box):
                    # The motion goes on there, or moved on: the same question.
                    camera.motion[i] = (box, captured_at, name)
                    return HELD_MOTION_ASKED
            camera.regions += 1
            name = f"{MOTION_PREFIX}{camera.regions}"
            camera.motion.append((box, captured_at, name))
            asks.append(AskRequest(camera_id, name, frame, (), decision.reason, decision.detail, decision.priority))
            return None
        asks.append(AskRequest(camera_id, None, frame, (), decision.reason, decision.detail, decision.priority))
        return None

    def _may_ask(self, track: _Track[F], captured_at: float, policy: MiningPolicy) -> bool:
        if track.verdict == "rejected" or track.waiting or track.asks >= self.max_asks:
            return False
        if track.best is not None:
            return True  # its window is open: a better frame may still come
        if track.asks == 0 or track.label != track.asked_label:
            return True
        if track.verdict == "unsure":
            interval = policy.resend_interval_s
        elif track.verdict == "confirmed" and policy.watch_list_enabled and track.label in policy.watch_list:
            interval = policy.watch_reask_interval_s  # a long stay of a watched object is checked anew
        else:
            return False
        return interval > 0 and captured_at - track.asked_at >= interval

    def _close_windows(self, camera: _Camera[F], captured_at: float) -> list[AskRequest[F]]:
        """The questions whose window has passed at `captured_at` (math.inf: every open one)."""
        return [
            self._ask_best(track)
            for track in camera.tracks.values()
            if track.window_opened is not None and captured_at - track.window_opened >= self.ask_window_s
        ]

    def _ask_best(self, track: _Track[F]) -> AskRequest[F]:
        """Close the track's window: the question with the best frame it gave."""
        best = track.best
        assert best is not None
        track.best = track.window_opened = None
        rule_ids = track.rules.take_window()
        return AskRequest(
            track.camera_id,
            track.track_id,
            best.frame,
            (best.detection,),
            best.reason,
            best.detail,
            best.priority,
            rule_ids,
        )

    def _end_lost(self, camera: _Camera[F], captured_at: float, asks: list[AskRequest[F]]) -> list[TrackEvent]:
        events: list[TrackEvent] = []
        for track_id in [i for i, t in camera.tracks.items() if captured_at - t.last_seen > self.lost_after_s]:
            track = camera.tracks.pop(track_id)
            if track.best is not None:  # the object left during its window: ask with the best frame it gave
                asks.append(self._ask_best(track))
            if track.announced and track.verdict != "rejected":
                events.append(self._event("end", track))
            self._ended[(track.camera_id, track_id)] = track
            while len(self._ended) > ENDED_KEPT:
                self._ended.popitem(last=False)
        return events

    def _find(self, camera_id: str, track_id: str) -> _Track[F] | None:
        camera = self._cameras.get(camera_id)
        if camera is not None and track_id in camera.tracks:
            return camera.tracks[track_id]
        return self._ended.get((camera_id, track_id))

    def _orphan(
        self, camera_id: str, track_id: str, detection: Detection, frame_seq: int, captured_at: float
    ) -> _Track[F]:
        track: _Track[F] = _Track.first(track_id, camera_id, detection, frame_seq, captured_at)
        self._ended[(camera_id, track_id)] = track
        return track

    def _event(self, kind: EventKind, track: _Track[F]) -> TrackEvent:
        payload: dict[str, Any] = {
            "schema": EVENT_SCHEMA,
            "type": kind,
            "id": f"{self.edge_id}/{track.camera_id}/{track.track_id}",
            "edge_id": self.edge_id,
            "camera": track.camera_id,
            "track_id": track.track_id,
            "label": track.label,
            "sub_label": track.sub_label,
            "score": round(float(track.score), 4),
            "top_score": round(float(track.top_score), 4),
            "box": [round(float(v), 1) for v in track.box],
            "frame_seq": track.frame_seq,
            "first_seen": track.first_seen,
            "last_seen": track.last_seen,
            "source": track.source,
            "verdict": track.verdict,
            "rules": list(track.rules.matched.values()),
            "policy_version": self.policy_version,
        }
        return TrackEvent(kind, track.camera_id, track.track_id, payload, track.frame_seq)


def _hard_tracks(reason: MinedReasonName, tracked: Sequence[Tracked], policy: MiningPolicy) -> list[Tracked]:
    """The tracks a hard frame asks about, by the rule that made it hard."""
    if reason == "random_audit":
        return list(tracked)
    if reason == "watch_list":
        return [t for t in tracked if t.detection.label in policy.watch_list]
    if reason == "motion_without_detection":
        return []
    unsure = [t for t in tracked if t.detection.score <= policy.band_for(t.detection.label).high]
    kept = [t for t in unsure if t.detection.score >= policy.band_for(t.detection.label).low]
    return kept or unsure


def _near(region: tuple[float, float, float, float], box: tuple[float, float, float, float]) -> bool:
    """Whether `box` overlaps `region` grown by MOTION_REGION_REACH of its size on every side."""
    dx = (region[2] - region[0]) * MOTION_REGION_REACH
    dy = (region[3] - region[1]) * MOTION_REGION_REACH
    grown = (region[0] - dx, region[1] - dy, region[2] + dx, region[3] + dy)
    return intersection(grown, box) > 0
