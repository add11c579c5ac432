"""The canary rule of a model rollout (cloud.models.rollout.judge) and how canaries are picked."""

from __future__ import annotations

import pytest

from cloud.models.config import RolloutConfig
from cloud.models.rollout import EdgeCounts, Judged, Rollout, device_health, judge, pick_canaries
from protos.policy_settings import ModelRef

MODEL = ModelRef(name="m", version="2", uri="edgeglm://m/2", sha256="a" * 64, size_bytes=10)
CONFIG = RolloutConfig(min_samples=20, max_rejection_increase=0.1, soak_s=60, switch_timeout_s=30, max_wait_s=600)


def rollout(switched: dict[str, float] | None = None, confirmed: int = 0, rejected: int = 0) -> Rollout:
    return Rollout(
        model=MODEL,
        previous=None,
        canaries=["gw-a", "gw-b"],
        baseline_versions=["1"],
        started_at=0.0,
        switched={"gw-a": 5.0, "gw-b": 6.0} if switched is None else switched,
        canary=Judged(confirmed=confirmed, rejected=rejected),
    )


def test_a_canary_that_never_runs_the_model_fails_the_rollout() -> None:
    late = rollout(switched={"gw-a": 5.0})
    assert judge(late, Judged(confirmed=100), CONFIG, 20.0).action == "wait"
    decision = judge(late, Judged(confirmed=100), CONFIG, 31.0)
    assert decision.action == "rollback"
    assert "gw-b did not report 2 within 30 s" in decision.why


@pytest.mark.parametrize(
    ("canary", "baseline", "now", "action"),
    [
        ((16, 4), (80, 20), 100.0, "promote"),  # 20 % against 20 %, soaked
        ((14, 6), (80, 20), 100.0, "promote"),  # 30 %: exactly the bound above 20 %, still fine
        ((13, 7), (80, 20), 100.0, "rollback"),  # 35 %: worse than the bound
        ((16, 4), (80, 20), 30.0, "wait"),  # healthy, not soaked yet (60 s after the last switch at 6 s)
        ((13, 7), (80, 20), 30.0, "rollback"),  # worse: no need to wait for the soak
        ((10, 5), (80, 20), 100.0, "wait"),  # 15 canary verdicts: too few to say
        ((16, 4), (8, 2), 100.0, "wait"),  # 10 baseline verdicts: too few to compare with
        ((10, 5), (80, 20), 700.0, "pause"),  # still too few after max_wait_s
    ],
)
def test_the_canaries_are_judged_against_the_baseline(
    canary: tuple[int, int], baseline: tuple[int, int], now: float, action: str
) -> None:
    decision = judge(
        rollout(confirmed=canary[0], rejected=canary[1]),
        Judged(confirmed=baseline[0], rejected=baseline[1]),
        CONFIG,
        now,
    )
    assert decision.action == action, decision.why


def test_a_rollback_says_both_rates() -> None:
    decision = judge(rollout(confirmed=10, rejected=10), Judged(confirmed=90, rejected=10), CONFIG, 100.0)
    assert decision.action == "rollback"
    assert "50% of the canaries' samples on 2 (10/20) against 10% on 1 (10/100)" in decision.why


def test_canaries_are_a_stable_share_of_at_least_one_edge() -> None:
    fleet = [f"gw-{i:02d}" for i in range(20)]
    picked = pick_canaries(fleet, 0.1, "v2")
    assert len(picked) == 2 and set(picked) <= set(fleet)
    assert pick_canaries(reversed(fleet), 0.1, "v2") == picked, "the order edges are listed in does not matter"
    assert pick_canaries(["gw-00"], 0.01, "v2") == ["gw-00"]
    assert pick_canaries([], 0.5, "v2") == []
    others = {tuple(pick_canaries(fleet, 0.1, f"v{n}")) for n in range(10)}
    assert len(others) > 1, "different rollouts spread over the fleet"


def counts(frames: int, detections: int, seconds: float, failures: int = 0, started: float = 1.0) -> EdgeCounts:
    return EdgeCounts(
        started_at=started,
        frames_detected=frames,
        detections=detections,
        detect_seconds=seconds,
        task_failures=failures,
    )


BEFORE = counts(frames=200, detections=100, seconds=2.0)  # 0.5 objects and 10 ms per frame on the old model


@pytest.mark.parametrize(
    ("now", "trouble"),
    [
        (counts(400, 200, 4.0), None),  # the same on the new model
        (counts(400, 250, 4.0), None),  # 0.75 per frame: 1.5x, within 2x
        (counts(400, 400, 4.0), "detects 1.50 objects per frame on the new model against 0.50"),  # 3x
        (counts(400, 120, 4.0), "detects 0.10 objects per frame"),  # 0.2x: it went blind
        (counts(400, 200, 8.0), "takes 30.0 ms per frame on the new model against 10.0 ms"),
        (counts(400, 200, 4.0, failures=1), "1 background task failures since it switched"),
        (counts(50, 10, 0.5, started=2.0), "restarted after switching"),
        (counts(250, 200, 2.5), None),  # 50 frames on the new model: too few to compare
    ],
)
def test_a_canarys_own_counters_compare_the_new_model_with_the_old(now: EdgeCounts, trouble: str | None) -> None:
    config = RolloutConfig(min_frames=100, max_detection_change=2.0, max_latency_increase=2.0)
    found = device_health("gw-a", BEFORE, now, config)
    assert (found is None) if trouble is None else (found is not None and trouble in found), found


def test_the_counters_rule_rolls_back_before_any_verdict() -> None:
    late = rollout(switched={"gw-a": 5.0, "gw-b": 6.0})
    late.at_switch.update({"gw-a": BEFORE, "gw-b": BEFORE})
    decision = judge(late, Judged(), CONFIG, 20.0, {"gw-a": BEFORE, "gw-b": counts(400, 200, 4.0, failures=2)})
    assert decision.action == "rollback" and decision.why.startswith("gw-b: 2 background task failures")
