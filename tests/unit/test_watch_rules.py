"""Watch rules in plain words: the policy's model and wire form, the zone rule, and the track book asking them.

The book is driven frame by frame as the agent drives it; the cloud's side (the rule's text from its
own policy, every asked rule answered) is tested in tests/integration/test_watch_rules_e2e.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.detect import Detection
from edge.convert import EdgeRuleAnswer, EdgeVerdict, policy_from_pb, policy_to_pb
from edge.mine.base import MiningDecision
from edge.policy.settings import Band, EdgePolicy, MiningPolicy
from edge.track import TrackBook, Tracked
from protos import policy_pb2
from protos.policy_settings import InvalidPolicyError, WatchRule, settings_fields_from_pb

FENCE = WatchRule(
    rule_id="fence-climb",
    text="a person climbing the fence",
    labels=("person",),
    zone=({"x": 0.0, "y": 0.5}, {"x": 1.0, "y": 0.5}, {"x": 1.0, "y": 1.0}, {"x": 0.0, "y": 1.0}),  # lower half
    severity="critical",
)
CAT = WatchRule(rule_id="cat", text="a cat in view", labels=("cat",), camera_ids=("cam",), severity="info")
POLICY = MiningPolicy(default_band=Band(low=0.3, high=0.6), resend_interval_s=10.0, watch_rules=(FENCE, CAT))
QUIET = MiningDecision("nothing", None, "", 0.0, ())
FRAME = (640, 480)


def test_a_rule_is_refused_with_what_is_wrong():
    with pytest.raises(ValidationError, match="rule_id"):
        WatchRule(rule_id="no spaces", text="x", labels=("cat",))
    with pytest.raises(ValidationError, match="printable"):
        WatchRule(rule_id="r", text="two\nlines", labels=("cat",))
    with pytest.raises(ValidationError, match="at least 3 points"):
        WatchRule(rule_id="r", text="x", labels=("cat",), zone=({"x": 0, "y": 0}, {"x": 1, "y": 1}))
    with pytest.raises(ValidationError, match="labels"):
        WatchRule(rule_id="r", text="x", labels=())
    with pytest.raises(ValidationError, match="appears more than once"):
        MiningPolicy(watch_rules=(CAT, CAT))


def test_the_zone_holds_the_bottom_centre_of_the_box():
    assert FENCE.is_candidate("person", (100.0, 300.0, 140.0, 400.0), FRAME)  # stands in the lower half
    assert not FENCE.is_candidate("person", (100.0, 50.0, 140.0, 200.0), FRAME)  # feet at y=200 of 480
    assert not FENCE.is_candidate("cat", (100.0, 300.0, 140.0, 400.0), FRAME)  # not a candidate label
    assert not FENCE.is_candidate("person", (100.0, 300.0, 140.0, 400.0), (0, 0))  # unknown frame: no zone holds it
    triangle = WatchRule(
        rule_id="t", text="x", labels=("cat",), zone=({"x": 0.0, "y": 0.0}, {"x": 1.0, "y": 0.0}, {"x": 0.0, "y": 1.0})
    )
    assert triangle.is_candidate("cat", (0.0, 0.0, 100.0, 100.0), (1000, 1000))  # (0.05, 0.1): inside
    assert not triangle.is_candidate("cat", (800.0, 800.0, 1000.0, 900.0), (1000, 1000))  # (0.9, 0.9): outside


def test_rules_survive_the_wire_and_each_camera_sees_its_own():
    policy = EdgePolicy(version=3, scope="fleet", mining=POLICY)
    back = policy_from_pb(policy_to_pb(policy))
    assert back.mining.watch_rules == (FENCE, CAT)
    assert [r.rule_id for r in POLICY.for_camera("cam").watch_rules] == ["fence-climb", "cat"]
    assert [r.rule_id for r in POLICY.for_camera("other").watch_rules] == ["fence-climb"]


def test_a_rule_without_a_severity_on_the_wire_is_refused_by_name():
    pb = policy_pb2.Policy(mining=policy_pb2.MiningSettings(watch_rules=[policy_pb2.WatchRule(rule_id="r", text="x")]))
    with pytest.raises(InvalidPolicyError, match=r"watch_rules\.r: severity is not set"):
        settings_fields_from_pb(pb, EdgePolicy(), "policy v9")


# ---------------------------------------------------------------- the book


def person(y2: float = 400.0, score: float = 0.9) -> Detection:
    return Detection((100.0, y2 - 100.0, 140.0, y2), score, 0, "person")


def answer(decision: str, *answers: tuple[str, str], track: str = "1") -> EdgeVerdict:
    return EdgeVerdict(
        sample_id="s",
        decision=decision,  # type: ignore[arg-type]
        labels=(),
        backend="openai",
        origin="backend",
        queue_ms=0.0,
        inference_ms=0.0,
        track_id=track,
        rule_answers=tuple(EdgeRuleAnswer(i, m, f"because {i}") for i, m in answers),  # type: ignore[arg-type]
    )


class Run:
    def __init__(self, window_s: float = 0.0, max_asks: int = 3) -> None:
        self.book: TrackBook[int] = TrackBook("gw", lost_after_s=2.0, ask_window_s=window_s, max_asks=max_asks)
        self.seq = 0
        self.asks: list[Any] = []
        self.events: list[dict[str, Any]] = []

    def t(self) -> float:
        return 1000.0 + self.seq / 10.0

    def frame(self, *tracked: Tracked, policy: MiningPolicy = POLICY) -> None:
        outcome = self.book.observe("cam", self.seq, self.t(), list(tracked), QUIET, policy, self.seq, None, FRAME)
        for ask in outcome.asks:
            self.book.asked(ask, self.t())
        self.asks.extend(outcome.asks)
        self.events.extend(e.payload for e in outcome.events)
        self.seq += 1

    def verdict(self, v: EdgeVerdict) -> list[dict[str, Any]]:
        events = self.book.apply_verdict("cam", v.track_id, v, frame_seq=0, captured_at=self.t(), asked_about=None)
        self.events.extend(e.payload for e in events)
        return [e.payload for e in events]


def test_a_candidate_asks_each_rule_once_and_a_match_is_its_event():
    run = Run()
    for _ in range(5):
        run.frame(Tracked("1", person()))  # a sure person in the fence's zone
    assert [(a.track_id, a.reason, a.rule_ids) for a in run.asks] == [("1", "watch_rule", ("fence-climb",))]
    [new] = [e for e in run.events if e["type"] == "new"]
    assert new["rules"] == []  # sure of the person at once; the rule is not answered yet
    [update] = run.verdict(answer("confirmed", ("fence-climb", "matched")))
    assert update["type"] == "update"
    assert update["rules"] == [
        {
            "id": "fence-climb",
            "text": "a person climbing the fence",
            "severity": "critical",
            "reason": "because fence-climb",
        }
    ]
    for _ in range(30):
        run.frame(Tracked("1", person()))
    assert len(run.asks) == 1  # answered: never asked again


def test_a_rule_answered_unsure_asks_again_after_the_interval_and_no_sooner():
    run = Run()
    run.frame(Tracked("1", person()))
    run.verdict(answer("unsure", ("fence-climb", "unsure")))
    for _ in range(99):  # 9.9 s of frames: within resend_interval_s
        run.frame(Tracked("1", person()))
    assert len(run.asks) == 1
    run.frame(Tracked("1", person()))  # 10 s after the first question
    assert [a.rule_ids for a in run.asks] == [("fence-climb",), ("fence-climb",)]


def test_a_match_on_an_object_the_edge_was_unsure_of_announces_it_with_the_rule():
    run = Run()
    run.frame(Tracked("1", person(score=0.45)))  # in band: not announced by the edge
    assert run.events == []
    [new] = run.verdict(answer("unsure", ("fence-climb", "matched")))
    assert new["type"] == "new" and [r["id"] for r in new["rules"]] == ["fence-climb"]


def test_a_rejected_object_keeps_no_match_and_stays_silent():
    run = Run()
    run.frame(Tracked("1", person(score=0.45)))
    assert run.verdict(answer("rejected", ("fence-climb", "matched"))) == []
    for _ in range(200):
        run.frame(Tracked("1", person(score=0.45)))
    assert len(run.asks) == 1 and run.events == []


def test_outside_the_zone_or_of_another_label_asks_nothing():
    run = Run()
    for _ in range(20):
        run.frame(Tracked("1", person(y2=200.0)), Tracked("2", Detection((10, 10, 50, 50), 0.9, 1, "rocket")))
    assert run.asks == []


def test_a_question_the_track_asks_anyway_carries_its_due_rules():
    run = Run(window_s=0.3)
    hard = MiningDecision("suspicious", "uncertainty_band", "cat 0.45 in band", 0.7, ())
    book = run.book
    cat = Tracked("7", Detection((100.0, 300.0, 140.0, 400.0), 0.45, 1, "cat"))
    asks = []
    for seq in range(5):
        outcome = book.observe("cam", seq, 1000.0 + seq / 10, [cat], hard, POLICY, seq, None, FRAME)
        asks.extend(outcome.asks)
    assert [(a.reason, a.rule_ids) for a in asks] == [("uncertainty_band", ("cat",))]


def test_the_rules_a_camera_does_not_watch_are_not_asked():
    run = Run()
    other = POLICY.for_camera("other")
    run.frame(Tracked("1", Detection((100.0, 300.0, 140.0, 400.0), 0.9, 1, "cat")), policy=other)
    assert run.asks == []


def test_max_asks_bounds_rule_questions():
    run = Run(max_asks=1)
    run.frame(Tracked("1", person()))
    run.verdict(answer("unsure", ("fence-climb", "unsure")))
    for _ in range(300):
        run.frame(Tracked("1", person()))
    assert len(run.asks) == 1
