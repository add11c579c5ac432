"""cloud/policy/rules.py: the audit rate and the watch re-ask interval from outcomes (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from cloud.policy.rules import plan_audit_rate, plan_watch_reask, wilson

AUDIT: dict[str, Any] = {"tolerance": 0.05, "min_samples": 30, "min_rate": 0.005, "max_rate": 0.2}
WATCH: dict[str, Any] = {"changed_share": 0.2, "min_samples": 12, "min_interval_s": 10.0, "max_interval_s": 3600.0}


def test_the_wilson_interval_matches_its_textbook_values() -> None:
    # 5 of 10: 0.2366-0.7634; 0 of 10: the upper bound is z^2 / (n + z^2).
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 3.8415 / 13.8415), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_audits_come_twice_as_often_while_the_cloud_keeps_contradicting_the_edge() -> None:
    wrong = [True] * 8 + [False] * 32  # 20 %: clearly above 5 %
    plan = plan_audit_rate(wrong, 0.02, **AUDIT)
    assert plan.proposed == 0.04 and "8 of 40" in plan.why
    assert plan_audit_rate(wrong, 0.15, **AUDIT).proposed == 0.2  # never above the cap
    assert plan_audit_rate(wrong, 0.2, **AUDIT).proposed is None  # at the cap: holds


def test_audits_halve_once_they_clearly_show_nothing_new_and_hold_on_thin_evidence() -> None:
    assert plan_audit_rate([False] * 29, 0.02, **AUDIT).proposed is None  # below min_samples
    thin = plan_audit_rate([False] * 40, 0.02, **AUDIT)  # 0 of 40: 95 % upper bound 8.8 %, not below 5 %
    assert thin.proposed is None and "holds" in thin.why
    sure = plan_audit_rate([False] * 80, 0.02, **AUDIT)  # 0 of 80: upper bound 4.6 %
    assert sure.proposed == 0.01
    assert plan_audit_rate([False] * 80, 0.006, **AUDIT).proposed == 0.005  # never below the floor
    assert plan_audit_rate([False] * 80, 0.0, **AUDIT).proposed is None  # audits off stay off


def test_watched_objects_are_checked_less_often_while_re_asks_change_nothing() -> None:
    assert plan_watch_reask([False] * 11, 30.0, **WATCH).proposed is None
    plan = plan_watch_reask([False] * 20, 30.0, **WATCH)  # 0 of 20: upper bound 16 % < 20 %
    assert plan.proposed == 60.0 and "0 of 20" in plan.why
    assert plan_watch_reask([False] * 20, 3000.0, **WATCH).proposed == 3600.0
    assert plan_watch_reask([False] * 20, 0.0, **WATCH).proposed is None  # re-asks off: the operator's choice


def test_watched_objects_are_checked_sooner_when_re_asks_change_the_answer() -> None:
    changed = [True] * 10 + [False] * 10  # 50 %
    assert plan_watch_reask(changed, 60.0, **WATCH).proposed == 30.0
    assert plan_watch_reask(changed, 12.0, **WATCH).proposed == 10.0
    mixed = plan_watch_reask([True] * 4 + [False] * 16, 60.0, **WATCH)  # 20 %: neither clearly above nor below
    assert mixed.proposed is None and "holds" in mixed.why
