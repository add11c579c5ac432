"""The closed loop's per-camera rules besides the bands: how often to audit, how often to re-check a watched object.

Both take a window of yes/no outcomes of one camera and move one policy value by halves and doubles,
within bounds, only when the evidence is clear at 95 % confidence (Wilson score interval): a rule
that moves on a handful of samples would wander; one that waits for certainty never moves.

- The audit rate (`random_audit_rate`). An audit sends frames no rule found hard, so it shows what the
  edge decides alone. Each audited detection the edge would have settled by itself (scored above its
  band's high: a local event; below its low: dropped) is an outcome: *wrong* when the cloud says
  otherwise. While the edge's local decisions are wrong more often than the loop tolerates
  (`1 - target_precision`), audits are what show it and move the bands: the rate doubles. Once they
  are clearly right, most audits spend bytes to learn nothing new: the rate halves.
- The watch list's re-ask interval (`watch_reask_interval_s`). A confirmed object of a watched label
  asks again after the interval (a long stay is checked anew). Each re-ask is an outcome: *changed*
  when the cloud's answer differs from the one it gave that object before (another object took the
  track over, or what was there is gone). When re-asks change answers more often than
  `watch_changed_share`, the interval halves; when they clearly do not, it doubles. An interval of 0
  (re-asks off) is the operator's and stays.

The interval is hand-written (four lines) rather than taken from scipy or statsmodels, which the
cloud does not otherwise need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959964  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class RulePlan:
    """The value a rule proposes (None: hold) and why, in words for the log and the dashboard."""

    proposed: float | None
    why: str
    samples: int


def wilson(hits: int, count: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a share `hits / count` (0, 1 when count is 0)."""
    if count <= 0:
        return 0.0, 1.0
    share = hits / count
    centre = share + z * z / (2 * count)
    spread = z * math.sqrt(share * (1 - share) / count + z * z / (4 * count * count))
    scale = 1 + z * z / count
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def _step(
    outcomes: Sequence[bool],
    current: float,
    *,
    share: float,
    bounds: tuple[float, float],
    up_when_high: bool,
    evidence: str,
    value: str,
) -> RulePlan:
    """Halve or double `current` within `bounds` when the share of True outcomes is clearly off `share`.

    Clearly: the 95 % Wilson interval lies wholly above or below it. When the share is high the value
    doubles if `up_when_high`, else halves; when low, the reverse. `evidence` formats (hits, count) and
    `value` the proposed value, for the words of the plan.
    """
    count = len(outcomes)
    hits = sum(outcomes)
    said = evidence.format(hits=hits, count=count, share=hits / count if count else 0.0)
    low_bound, high_bound = wilson(hits, count)
    least, most = bounds
    if low_bound > share:
        proposed, how = (min(most, current * 2) if up_when_high else max(least, current / 2)), "above"
    elif high_bound < share:
        proposed, how = (max(least, current / 2) if up_when_high else min(most, current * 2)), "clearly below"
    else:
        return RulePlan(None, f"{said}: {value.format(current)} holds", count)
    if proposed == current:
        return RulePlan(None, f"{said}, {how} {share:.0%}: {value.format(current)} is at its bound", count)
    return RulePlan(proposed, f"{said}, {how} {share:.0%}: {value.format(proposed)} from now", count)


def plan_audit_rate(
    wrong: Sequence[bool],
    current: float,
    *,
    tolerance: float,
    min_samples: int,
    min_rate: float,
    max_rate: float,
) -> RulePlan:
    """The camera's next `random_audit_rate` from audited local decisions (True: the cloud said otherwise)."""
    if current <= 0.0:
        return RulePlan(None, "audits are off for this camera", len(wrong))
    if len(wrong) < min_samples:
        return RulePlan(None, f"{len(wrong)} of {min_samples} audited local decisions", len(wrong))
    return _step(
        wrong,
        current,
        share=tolerance,
        bounds=(min_rate, max_rate),
        up_when_high=True,
        evidence="the cloud contradicted {hits} of {count} audited local decisions ({share:.0%})",
        value="audit rate {:g}",
    )


def plan_watch_reask(
    changed: Sequence[bool],
    current: float,
    *,
    changed_share: float,
    min_samples: int,
    min_interval_s: float,
    max_interval_s: float,
) -> RulePlan:
    """The camera's next `watch_reask_interval_s` from re-asks of watched objects (True: the answer changed)."""
    if current <= 0.0:
        return RulePlan(None, "re-asks of watched objects are off for this camera", len(changed))
    if len(changed) < min_samples:
        return RulePlan(None, f"{len(changed)} of {min_samples} re-asks of watched objects", len(changed))
    return _step(
        changed,
        current,
        share=changed_share,
        bounds=(min_interval_s, max_interval_s),
        up_when_high=False,
        evidence="re-asks changed the cloud's answer on {hits} of {count} watched objects ({share:.0%})",
        value="re-ask after {:g} s",
    )
