"""edge/track/book.py: one question per tracked object, verdicts that follow the track, new/update/end events.

The book is pure logic on capture times; these tests drive it frame by frame as the agent does, with
hand-made tracked detections, so every rule is checked on a known sequence.
"""

from __future__ import annotations

from typing import Any

import pytest

from common.detect import Detection
from edge.convert import EdgeVerdict
from edge.mine.base import MiningDecision
from edge.policy.settings import Band, MiningPolicy
from edge.track import TrackBook, Tracked
from edge.track.book import HELD_MOTION_ASKED, HELD_TRACK_ASKED, FrameOutcome

POLICY = MiningPolicy(default_band=Band(low=0.3, high=0.6), watch_list=("rocket",), resend_interval_s=10.0)
FPS = 10.0


def det(score: float, label: str = "cat", x: float = 100.0, size: float = 40.0) -> Detection:
    return Detection((x, 50.0, x + size, 50.0 + size), score, 0, label)


def hard(reason: str = "uncertainty_band") -> MiningDecision:
    return MiningDecision("suspicious", reason, "hard", 0.7, ())  # type: ignore[arg-type]


QUIET = MiningDecision("nothing", None, "", 0.0, ())


def verdict(decision: str, *detections: Detection, text: str = "", backend: str = "onnx") -> EdgeVerdict:
    return EdgeVerdict(
        sample_id="s",
        decision=decision,  # type: ignore[arg-type]
        labels=tuple(sorted({d.label for d in detections})),
        backend=backend,
        origin="backend",
        queue_ms=0.0,
        inference_ms=0.0,
        detections=detections,
        text=text,
    )


class Run:
    """Feeds one camera's frames to a book and collects what comes out."""

    def __init__(self, book: TrackBook[int] | None = None) -> None:
        self.book: TrackBook[int] = book or TrackBook("gw", lost_after_s=2.0, ask_window_s=0.0, max_asks=3)
        self.seq = 0
        self.events: list[dict[str, Any]] = []
        self.asks: list[tuple[str | None, int, float]] = []  # (track, frame seq, score asked about)
        self.held: list[str | None] = []

    def t(self, seq: int | None = None) -> float:
        return 1000.0 + (self.seq if seq is None else seq) / FPS

    def frame(self, tracked: list[Tracked], decision: MiningDecision = QUIET, motion: Any = None) -> FrameOutcome[int]:
        outcome = self.book.observe("cam", self.seq, self.t(), tracked, decision, POLICY, self.seq, motion)
        self._collect(outcome)
        self.seq += 1
        return outcome

    def skip(self, frames: int) -> None:
        """Frames the gate skipped: tracks age by their capture time only."""
        for _ in range(frames):
            self._collect(self.book.tick("cam", self.t()))
            self.seq += 1

    def answer(self, track: str, decision: EdgeVerdict, asked: Detection, seq: int = 0) -> list[dict[str, Any]]:
        events = self.book.apply_verdict(
            "cam", track, decision, frame_seq=seq, captured_at=self.t(seq), asked_about=asked
        )
        self.events.extend(e.payload for e in events)
        return [e.payload for e in events]

    def _collect(self, outcome: FrameOutcome[int]) -> None:
        self.events.extend(e.payload for e in outcome.events)
        for ask in outcome.asks:
            self.book.asked(ask, self.t())
            self.asks.append((ask.track_id, ask.frame, ask.detections[0].score if ask.detections else -1.0))
        self.held.append(outcome.held_back)

    def kinds(self, track: str = "1") -> list[str]:
        return [e["type"] for e in self.events if e["track_id"] == track]


def test_a_confident_object_is_announced_at_once_and_once_then_ends_after_it_is_lost() -> None:
    run = Run()
    for _ in range(30):
        run.frame([Tracked("1", det(0.9))])
    assert run.kinds() == ["new"]
    new = run.events[0]
    assert (new["id"], new["label"], new["source"], new["verdict"], new["frame_seq"]) == (
        "gw/cam/1",
        "cat",
        "edge",
        None,
        0,
    )
    assert run.asks == []
    run.skip(15)  # 1.5 s of frames the gate skipped: the object is not lost yet
    assert run.kinds() == ["new"]
    run.skip(10)
    assert run.kinds() == ["new", "end"]
    end = run.events[-1]
    assert end["first_seen"] == pytest.approx(run.t(0)) and end["last_seen"] == pytest.approx(run.t(29))


def test_a_hard_object_asks_once_however_long_it_stays() -> None:
    run = Run()
    for _ in range(50):
        run.frame([Tracked("1", det(0.45))], hard())
    assert run.asks == [("1", 0, 0.45)]
    assert run.held[1:] == [HELD_TRACK_ASKED] * 49
    assert run.events == []  # not sure, not confirmed: no event yet


def test_a_confirmed_track_gets_one_new_and_later_updates_never_a_second_new() -> None:
    run = Run()
    asked = det(0.45)
    run.frame([Tracked("1", asked)], hard())
    events = run.answer("1", verdict("confirmed", det(0.93), text="a tabby cat", backend="glm"), asked)
    assert [e["type"] for e in events] == ["new"]
    assert (events[0]["source"], events[0]["verdict"], events[0]["sub_label"]) == ("cloud", "confirmed", "a tabby cat")
    # The edge later becomes sure of it itself, and it changes label: no second new, an update.
    for _ in range(5):
        run.frame([Tracked("1", det(0.9))])
    run.frame([Tracked("1", det(0.9, label="dog"))])
    assert run.kinds() == ["new"]  # a cloud-confirmed label is not overridden by the edge's guess
    run.skip(30)
    assert run.kinds() == ["new", "end"]


def test_an_announced_object_the_cloud_confirms_gets_an_update_with_the_clouds_word() -> None:
    run = Run()
    seen = det(0.9, label="rocket")  # sure, and on the watch list: announced now and asked about
    run.frame([Tracked("1", seen)], hard("watch_list"))
    assert run.kinds() == ["new"] and run.asks == [("1", 0, 0.9)]
    run.answer("1", verdict("confirmed", det(0.97, label="rocket")), seen)
    assert run.kinds() == ["new", "update"]
    update = run.events[-1]
    assert (update["verdict"], update["source"], update["top_score"]) == ("confirmed", "cloud", 0.97)


def test_a_rejected_track_stays_silent_and_asks_no_more() -> None:
    run = Run()
    asked = det(0.45)
    run.frame([Tracked("1", asked)], hard())
    assert run.answer("1", verdict("rejected"), asked) == []
    for _ in range(20):  # even when the edge becomes sure of it, or its label changes
        run.frame([Tracked("1", det(0.95, label="dog"))], hard())
    run.skip(30)
    assert run.events == []
    assert run.asks == [("1", 0, 0.45)]


def test_an_announced_track_rejected_later_is_withdrawn_by_an_update() -> None:
    run = Run()
    seen = det(0.9)
    run.frame([Tracked("1", seen)], hard("random_audit"))
    run.answer("1", verdict("rejected"), seen)
    run.frame([Tracked("1", seen)])
    run.skip(30)
    assert run.kinds() == ["new", "update"]
    assert run.events[-1]["verdict"] == "rejected"


def test_a_late_verdict_updates_the_right_track_after_it_ended() -> None:
    run = Run()
    first, second = det(0.45, x=10.0), det(0.5, x=300.0)
    run.frame([Tracked("1", first), Tracked("2", second)], hard())
    run.skip(40)  # both gone before any answer (the link was down)
    assert run.events == []
    # The answers come back after a reconnect, the second first.
    events = run.answer("2", verdict("confirmed", det(0.9, x=300.0)), second)
    assert [(e["type"], e["track_id"]) for e in events] == [("new", "2"), ("end", "2")]
    assert run.answer("1", verdict("rejected"), first) == []
    assert run.kinds("1") == []


def test_a_verdict_for_a_track_the_agent_forgot_still_makes_its_event() -> None:
    run = Run()  # a fresh book: the agent restarted; the sample survived in the outbox
    asked = det(0.45)
    events = run.answer("17", verdict("confirmed", det(0.9)), asked, seq=5)
    assert [(e["type"], e["track_id"], e["frame_seq"]) for e in events] == [("new", "17", 5), ("end", "17", 5)]


def test_an_unsure_answer_asks_again_after_the_policys_interval_and_a_class_change_asks_at_once() -> None:
    run = Run()
    asked = det(0.45)
    run.frame([Tracked("1", asked)], hard())
    run.answer("1", verdict("unsure"), asked)
    for _ in range(99):  # 9.9 s: within the policy's 10 s
        run.frame([Tracked("1", det(0.45))], hard())
    assert len(run.asks) == 1
    run.frame([Tracked("1", det(0.45))], hard())  # 10 s after the question
    assert [a[1] for a in run.asks] == [0, 100]
    run.answer("1", verdict("unsure"), asked)
    run.frame([Tracked("1", det(0.45, label="dog"))], hard())  # the edge now sees another class
    assert [a[1] for a in run.asks] == [0, 100, 101]
    run.answer("1", verdict("unsure"), asked)
    run.frame([Tracked("1", det(0.45, label="cat"))], hard())
    assert len(run.asks) == 3  # max_asks: the track has asked all it may


def test_a_confirmed_watched_object_is_checked_again_after_the_watch_interval_and_others_never() -> None:
    policy = POLICY.model_copy(update={"watch_reask_interval_s": 5.0})
    run = Run()

    def frame(*tracked: Tracked) -> None:
        run._collect(run.book.observe("cam", run.seq, run.t(), list(tracked), hard("watch_list"), policy, run.seq))
        run.seq += 1

    rocket, cat = det(0.8, label="rocket"), det(0.45, x=300.0)
    frame(Tracked("1", rocket), Tracked("2", cat))
    assert sorted(a[0] or "" for a in run.asks) == ["1"]  # the watch list asks about the watched object
    run.answer("1", verdict("confirmed", rocket), rocket)
    announced = run.kinds("1")
    assert announced == ["new", "update"]  # sure at once, then the cloud's word
    for _ in range(49):  # 4.9 s: within the watch interval
        frame(Tracked("1", rocket), Tracked("2", cat))
    assert len(run.asks) == 1
    frame(Tracked("1", rocket), Tracked("2", cat))  # 5 s after the question: the long stay is checked anew
    assert [(a[0], a[1]) for a in run.asks] == [("1", 0), ("1", 50)]
    assert run.kinds("1") == announced, "the re-ask is a question, not an event"
    # Without a watch interval a confirmed watched object never asks again.
    quiet = Run()
    quiet.frame([Tracked("1", rocket)], hard("watch_list"))
    quiet.answer("1", verdict("confirmed", rocket), rocket)
    for _ in range(200):
        quiet.frame([Tracked("1", rocket)], hard("watch_list"))
    assert len(quiet.asks) == 1


def test_the_question_carries_the_best_frame_of_its_window() -> None:
    run = Run(TrackBook("gw", lost_after_s=2.0, ask_window_s=0.5, max_asks=3))
    scores = [0.35, 0.5, 0.58, 0.4, 0.45, 0.55, 0.5]
    for score in scores:
        run.frame([Tracked("1", det(score))], hard())
    # Frames 0-4 are within 0.5 s of the first: the best of them (0.58, frame 2) goes, once.
    assert run.asks == [("1", 2, 0.58)]


def test_an_object_that_leaves_during_its_window_asks_with_what_it_gave() -> None:
    run = Run(TrackBook("gw", lost_after_s=1.0, ask_window_s=5.0, max_asks=3))
    run.frame([Tracked("1", det(0.4))], hard())
    run.frame([Tracked("1", det(0.5, size=60.0))], hard())
    assert run.asks == []
    run.skip(15)
    assert run.asks == [("1", 1, 0.5)]


def test_motion_without_detection_asks_once_per_moving_region() -> None:
    run = Run()
    motion = hard("motion_without_detection")
    for i in range(10):
        run.frame([], motion, motion=(100 + i, 100, 200 + i, 200))  # one region, drifting
    run.frame([], motion, motion=(400, 300, 500, 400))  # somewhere else
    assert [(a[0], a[1]) for a in run.asks] == [("motion-1", 0), ("motion-2", 10)]
    assert run.held[1:10] == [HELD_MOTION_ASKED] * 9
    run.skip(30)  # the motion stopped; when it comes back there, it is a new question
    run.frame([], motion, motion=(100, 100, 200, 200))
    assert len(run.asks) == 3
    run.skip(30)
    for i in range(8):  # something crossing the view, 60 px a frame: one moving region, one question
        run.frame([], motion, motion=(20 + 60 * i, 300, 120 + 60 * i, 400))
    assert len(run.asks) == 4


def test_an_audit_of_a_frame_without_objects_asks_about_the_frame() -> None:
    run = Run()
    run.frame([], hard("random_audit"))
    assert run.asks == [(None, 0, -1.0)]


def test_per_frame_mode_asks_nothing_itself_and_a_frame_verdict_confirms_the_tracks_it_showed() -> None:
    run = Run(TrackBook("gw", lost_after_s=2.0, ask_window_s=0.0, max_asks=3, mode="per_frame"))
    shown = [Tracked("1", det(0.45)), Tracked("2", det(0.45, label="dog", x=300.0))]
    run.frame(shown, hard())
    assert run.asks == []
    run.book.sent_frame("cam", 0, shown)
    events = run.book.apply_verdict(
        "cam", "", verdict("confirmed", det(0.9)), frame_seq=0, captured_at=run.t(0), asked_about=None
    )
    assert [(e.kind, e.track_id, e.payload["label"]) for e in events] == [("new", "1", "cat")]


def test_shutdown_asks_open_windows_and_ends_every_live_track() -> None:
    run = Run(TrackBook("gw", lost_after_s=2.0, ask_window_s=5.0, max_asks=3))
    run.frame([Tracked("1", det(0.9)), Tracked("2", det(0.45, x=300.0))], hard())
    outcome = run.book.end_all()
    assert [(e.kind, e.track_id) for e in outcome.events] == [("end", "1")]
    assert [a.track_id for a in outcome.asks] == ["2"]


def test_a_track_waiting_for_its_answer_does_not_ask_again_even_when_its_label_changes() -> None:
    run = Run()
    asked = det(0.45)
    run.frame([Tracked("1", asked)], hard())
    run.frame([Tracked("1", det(0.45, label="dog"))], hard())
    assert len(run.asks) == 1
    run.answer("1", verdict("unsure"), asked)
    run.frame([Tracked("1", det(0.45, label="dog"))], hard())
    assert [a[1] for a in run.asks] == [0, 2]


def test_what_the_cloud_finds_in_a_moving_region_is_one_object_however_often_it_is_asked() -> None:
    run = Run()
    motion = hard("motion_without_detection")
    run.frame([], motion, motion=(100, 100, 200, 200))
    run.skip(30)  # the motion stopped, then came back in the same region: asked again, same object
    assert [a[0] for a in run.asks] == ["motion-1"]
    first = run.answer("motion-1", verdict("confirmed", det(0.7, x=110.0), det(0.4, label="cup")), det(0.0))
    assert [(e["type"], e["track_id"], e["label"], e["source"]) for e in first] == [
        ("new", "motion-1", "cat", "cloud"),
        ("end", "motion-1", "cat", "cloud"),
    ]
    again = run.answer("motion-1", verdict("confirmed", det(0.8, x=120.0)), det(0.0))
    assert [(e["type"], e["track_id"], e["box"][0]) for e in again] == [("update", "motion-1", 120.0)]
    assert run.answer("motion-1", verdict("rejected"), det(0.0)) == []
