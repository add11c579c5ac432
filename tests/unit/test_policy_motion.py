"""cloud/policy/motion.py: the motion rule's threshold from judged motion samples (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from cloud.policy.motion import plan_motion_area

RULE: dict[str, Any] = {"target_recall": 0.95, "reject_share": 0.8, "min_samples": 20, "max_area": 0.05}
RULE["hysteresis"] = 0.2


def test_too_few_samples_hold() -> None:
    plan = plan_motion_area([(0.001, True)] * 19, 0.0, **RULE)
    assert plan.proposed is None and "19 of 20" in plan.why


def test_all_rejected_raises_to_the_median_rejected_area_and_never_above_the_cap() -> None:
    samples = [(area / 1000, True) for area in range(1, 31)]  # 0.001 .. 0.030
    assert plan_motion_area(samples, 0.0, **RULE).proposed == pytest.approx(0.0155)
    capped = plan_motion_area([(0.2, True)] * 30, 0.0, **RULE)
    assert capped.proposed == 0.05


def test_the_threshold_keeps_the_confirmed_samples_through() -> None:
    samples = [(0.002, True)] * 45 + [(0.02, False), (0.03, False), (0.04, False), (0.05, False), (0.06, False)]
    plan = plan_motion_area(samples, 0.0, **RULE)
    assert plan.proposed == 0.02  # every confirmed change is at least this large


def test_small_moves_are_held_by_the_hysteresis_and_a_useful_rule_comes_back_down() -> None:
    samples = [(0.010, True)] * 18 + [(0.011, True)] * 2
    assert plan_motion_area(samples, 0.0095, **RULE).proposed is None  # 0.010 is within 20 % of 0.0095
    useful = [(0.004, False)] * 17 + [(0.01, True)] * 3  # the cloud confirms most of what motion sends
    lowered = plan_motion_area(useful, 0.02, **RULE)
    assert lowered.proposed == 0.004 and "worth asking about again" in lowered.why
