"""The miner: one decision per frame from the strategies, in their precedence."""

from __future__ import annotations

import random
from typing import ClassVar

import pytest

from common.detect import Detection
from edge.mine import Miner, MiningContext, StrategyVote
from edge.mine.strategies import PRECEDENCE, default_strategies
from edge.policy.settings import Band, MiningPolicy
from protos.reasons import MinedReasonName

NO_AUDIT = MiningPolicy(random_audit_enabled=False)


def det(label: str, score: float) -> Detection:
    return Detection(box=(0.0, 0.0, 10.0, 10.0), score=score, class_id=0, label=label)


def ctx(*detections: Detection, motion: bool = True, seq: int = 0) -> MiningContext:
    return MiningContext("cam0", seq, motion, detections)


def test_precedence_is_documented_and_matches_the_default_strategies():
    assert PRECEDENCE == (
        "watch_list",
        "uncertainty_band",
        "ibt",
        "cross_entropy",
        "motion_without_detection",
        "random_audit",
    )
    assert tuple(s.name for s in default_strategies(random.Random(0))) == PRECEDENCE


def test_confident_detections_make_a_confident_frame():
    decision = Miner(NO_AUDIT).decide(ctx(det("cat", 0.9), det("cup", 0.7)))
    assert decision.kind == "confident"
    assert decision.reason is None
    assert [d.label for d in decision.confident] == ["cat", "cup"]


def test_a_frame_without_detections_or_motion_is_nothing():
    decision = Miner(NO_AUDIT).decide(ctx(motion=False))
    assert decision.kind == "nothing"
    assert decision.reason is None
    assert decision.confident == ()


def test_noise_alone_without_motion_is_nothing():
    assert Miner(NO_AUDIT).decide(ctx(det("cat", 0.1), motion=False)).kind == "nothing"


def test_motion_without_detection_is_suspicious():
    decision = Miner(NO_AUDIT).decide(ctx(motion=True))
    assert (decision.kind, decision.reason) == ("suspicious", "motion_without_detection")


def test_an_in_band_detection_is_suspicious_and_confident_ones_are_still_acted_on():
    decision = Miner(NO_AUDIT).decide(ctx(det("cat", 0.4), det("cup", 0.95)))
    assert (decision.kind, decision.reason) == ("suspicious", "uncertainty_band")
    assert [d.label for d in decision.confident] == ["cup"]
    assert decision.detail.startswith("cat 0.40 in band")


def test_the_first_firing_strategy_gives_the_reason_and_the_others_are_in_the_detail():
    policy = MiningPolicy(
        watch_list=("person",),
        ibt_enabled=True,
        cross_entropy_enabled=True,
        random_audit_enabled=False,
    )
    frame = ctx(det("person", 0.4), det("cat", 0.45))
    decision = Miner(policy).decide(frame)
    assert decision.reason == "watch_list"
    for other in ("uncertainty_band", "ibt", "cross_entropy"):
        assert other in decision.detail
    without_watch = Miner(policy.model_copy(update={"watch_list": ()})).decide(frame)
    assert without_watch.reason == "uncertainty_band"
    assert "watch_list" not in without_watch.detail
    only_sedna = policy.model_copy(update={"watch_list": (), "uncertainty_band_enabled": False})
    assert Miner(only_sedna).decide(frame).reason == "ibt"
    only_ce = only_sedna.model_copy(update={"ibt_enabled": False})
    assert Miner(only_ce).decide(frame).reason == "cross_entropy"


def test_priority_is_the_highest_any_firing_strategy_gave():
    policy = MiningPolicy(watch_list=("person",), random_audit_enabled=False)
    decision = Miner(policy).decide(ctx(det("person", 0.95), det("cat", 0.425)))  # cat at its band's middle
    assert decision.reason == "watch_list"
    assert decision.priority == pytest.approx(1.0)


def test_more_uncertain_frames_get_higher_priority():
    policy = MiningPolicy(watch_list=("person",), random_audit_rate=1.0, resend_interval_s=0)  # each frame judged alone
    miner = Miner(policy, rng=random.Random(0))
    ordered = [
        ctx(det("cat", 0.425)),  # band middle
        ctx(det("person", 0.9)),  # watch-listed, sure
        ctx(det("cat", 0.5)),  # in band, off-centre
        ctx(),  # motion, nothing detected: medium
        ctx(det("cat", 0.58)),  # in band, near its high: nearly sure
        ctx(det("cat", 0.9), motion=False),  # audited
    ]
    decisions = [miner.decide(frame) for frame in ordered]
    assert [d.reason for d in decisions] == [
        "uncertainty_band",
        "watch_list",
        "uncertainty_band",
        "motion_without_detection",
        "uncertainty_band",
        "random_audit",
    ]
    priorities = [d.priority for d in decisions]
    assert priorities == sorted(priorities, reverse=True)
    assert len(set(priorities)) == len(priorities)
    assert all(0.0 <= p <= 1.0 for p in priorities)


def test_a_policy_update_changes_the_next_decision():
    miner = Miner(NO_AUDIT)
    frame = ctx(det("cat", 0.5))
    assert miner.decide(frame).kind == "suspicious"
    miner.update_policy(NO_AUDIT.model_copy(update={"default_band": Band(low=0.25, high=0.45)}))
    decision = miner.decide(frame)
    assert decision.kind == "confident"
    assert decision.confident == (det("cat", 0.5),)


def test_bands_are_per_class():
    policy = NO_AUDIT.model_copy(update={"bands": {"person": Band(low=0.5, high=0.8)}})
    miner = Miner(policy)
    assert miner.decide(ctx(det("person", 0.7))).kind == "suspicious"
    assert miner.decide(ctx(det("cat", 0.7))).kind == "confident"


def test_a_disabled_band_leaves_in_band_detections_unacted():
    policy = NO_AUDIT.model_copy(update={"uncertainty_band_enabled": False})
    decision = Miner(policy).decide(ctx(det("cat", 0.5), motion=False))
    assert decision.kind == "nothing"
    assert decision.confident == ()


def test_random_audit_rate_is_met_over_many_confident_frames():
    miner = Miner(MiningPolicy(random_audit_rate=0.1), rng=random.Random(1234))
    decisions = [miner.decide(ctx(det("cat", 0.9), seq=i)) for i in range(10_000)]
    audited = [d for d in decisions if d.reason == "random_audit"]
    assert 0.08 <= len(audited) / len(decisions) <= 0.12
    assert all(d.kind == "suspicious" and d.priority == 0.05 and d.confident for d in audited)
    assert all(d.kind == "confident" for d in decisions if d.reason is None)


def test_random_audit_also_covers_frames_with_only_unacted_detections():
    policy = MiningPolicy(uncertainty_band_enabled=False, random_audit_rate=1.0)
    decision = Miner(policy, rng=random.Random(0)).decide(ctx(det("cat", 0.5), motion=False))
    assert decision.reason == "random_audit"


def test_random_audit_never_picks_frames_without_detections_or_already_suspicious():
    miner = Miner(MiningPolicy(random_audit_rate=1.0), rng=random.Random(0))
    assert miner.decide(ctx(motion=False)).kind == "nothing"
    in_band = miner.decide(ctx(det("cat", 0.4)))
    assert in_band.reason == "uncertainty_band"
    assert "random_audit" not in in_band.detail


def test_random_audit_is_reproducible_with_a_seed():
    frames = [ctx(det("cat", 0.9), seq=i) for i in range(200)]
    runs = [
        [Miner(MiningPolicy(random_audit_rate=0.2), rng=random.Random(7)).decide(f).reason for f in frames]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_random_audit_off_at_rate_zero_or_disabled():
    frames = [ctx(det("cat", 0.9)) for _ in range(500)]
    for policy in (
        MiningPolicy(random_audit_rate=0.0),
        MiningPolicy(random_audit_enabled=False, random_audit_rate=1.0),
    ):
        miner = Miner(policy, rng=random.Random(0))
        assert all(miner.decide(f).kind == "confident" for f in frames)


class AlwaysSuspicious:
    """A strategy plugged in from outside the package."""

    name: ClassVar[MinedReasonName] = "ibt"
    fallback: ClassVar[bool] = False

    def enabled(self, policy: MiningPolicy) -> bool:
        return True

    def evaluate(self, ctx: MiningContext, policy: MiningPolicy) -> StrategyVote | None:
        return StrategyVote(priority=0.3, detail="always")


def test_strategies_can_be_supplied_and_must_name_distinct_reasons():
    decision = Miner(NO_AUDIT, strategies=[AlwaysSuspicious()]).decide(ctx(det("cat", 0.9)))
    assert (decision.kind, decision.reason, decision.detail) == ("suspicious", "ibt", "always")
    with pytest.raises(ValueError, match="twice"):
        Miner(NO_AUDIT, strategies=[AlwaysSuspicious(), AlwaysSuspicious()])


def at(seconds: float, *detections: Detection, camera: str = "cam0") -> MiningContext:
    return MiningContext(camera, int(seconds), True, detections, captured_at=1_000.0 + seconds)


def test_the_resend_interval_holds_back_the_same_labels_for_the_same_reason_in_capture_time():
    miner = Miner(MiningPolicy(random_audit_enabled=False, watch_list=("cat",), resend_interval_s=10))
    first = miner.decide(at(0, det("cat", 0.9)))
    again = miner.decide(at(9.5, det("cat", 0.9)))
    other_camera = miner.decide(at(9.5, det("cat", 0.9), camera="cam1"))
    later = miner.decide(at(10.5, det("cat", 0.9)))
    assert (first.kind, first.reason) == ("suspicious", "watch_list")
    assert (again.kind, again.held_back) == ("confident", "resend_interval")
    assert [d.label for d in again.confident] == ["cat"]  # still acted on locally
    assert other_camera.kind == "suspicious"
    assert later.kind == "suspicious"


def test_send_every_frame_sends_what_no_strategy_fired_on_as_an_audit_and_is_never_held_back():
    miner = Miner(MiningPolicy(random_audit_enabled=False, resend_interval_s=60), send_every_frame=True)
    quiet = [miner.decide(at(s, det("cat", 0.95))) for s in (0, 1, 2)]
    assert [(d.kind, d.reason, d.held_back) for d in quiet] == [("suspicious", "random_audit", None)] * 3


def test_each_camera_mines_under_its_own_values_of_the_closed_loops_rules():
    """The motion threshold and the audit rate of one camera (mining.cameras) leave the other cameras alone."""
    policy = MiningPolicy.model_validate(
        {"random_audit_rate": 0.0, "cameras": {"yard": {"motion_min_area_fraction": 0.01, "random_audit_rate": 1.0}}}
    )
    miner = Miner(policy, rng=random.Random(0))
    assert miner.decide(MiningContext("door", 1, True, (), motion_area=0.005)).reason == "motion_without_detection"
    assert miner.decide(MiningContext("yard", 1, True, (), motion_area=0.005)).kind == "nothing"  # below yard's
    assert miner.decide(MiningContext("yard", 2, True, (), motion_area=0.02)).reason == "motion_without_detection"
    sure = (det("cat", 0.9),)
    assert miner.decide(MiningContext("door", 3, True, sure)).kind == "confident"  # no audit at rate 0
    assert miner.decide(MiningContext("yard", 3, True, sure)).reason == "random_audit"  # yard audits every frame
