"""The closed loop's motion rule: how large a change must be before motion without detection asks the cloud.

Motion without detection is how the cloud hears of what the edge model cannot see; on most cameras
it is also a stream of shadows, leaves and light. Every such sample carries the share of the frame
the gate saw change in (`Sample.motion_area_fraction`), and its verdict says whether the cloud found
an object there. Per camera, the last `motion_window` judged motion samples are kept (area, rejected).

`plan_motion_area` proposes the policy's `motion_min_area_fraction` from them:
- nothing moves before `motion_min_samples` samples, nor while the cloud rejects less than
  `motion_reject_share` of them (the rule earns its bytes);
- the new threshold keeps at least `target_recall` of the motion samples the cloud confirmed (the
  largest area below which at most 1 - target_recall of them lie); with none confirmed yet, it is
  the median area of the rejected ones, so the traffic halves and the evidence keeps coming;
- never above `motion_max_area`, and only when it rises by more than `hysteresis` (relative): the
  threshold does not wander on noise. It is lowered the same way when the cloud confirms most of
  what motion sends (below `1 - motion_reject_share` rejected) and the confirmed areas allow it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MotionSample = tuple[float, bool]  # (area share of the frame, rejected by the cloud)


@dataclass(frozen=True)
class MotionPlan:
    """The threshold the rule proposes (None: hold) and why, in words for the log and the dashboard."""

    proposed: float | None
    why: str
    samples: int
    rejected_share: float | None


def plan_motion_area(
    samples: Sequence[MotionSample],
    current: float,
    *,
    target_recall: float,
    reject_share: float,
    min_samples: int,
    max_area: float,
    hysteresis: float,
) -> MotionPlan:
    """The motion rule's next `motion_min_area_fraction` for one camera (see the module's docstring)."""
    count = len(samples)
    if count < min_samples:
        return MotionPlan(None, f"{count} of {min_samples} judged motion samples", count, None)
    rejected = [area for area, no in samples if no]
    confirmed = np.asarray([area for area, no in samples if not no], dtype=np.float64)
    share = len(rejected) / count
    evidence = f"the cloud rejected {len(rejected)} of {count} motion samples ({share:.0%})"
    if confirmed.size:
        # The largest threshold that still lets target_recall of the confirmed ones through.
        target = float(np.quantile(confirmed, 1.0 - target_recall, method="lower"))
    else:
        target = float(np.median(rejected))
    target = min(max_area, max(0.0, target))
    if share >= reject_share and target > current * (1.0 + hysteresis) and target > 0.0:
        kept = (
            "none confirmed yet" if not confirmed.size else f"{(confirmed >= target).mean():.0%} of the confirmed kept"
        )
        why = f"{evidence}: motion needs {target:.4f} of the frame from now ({kept})"
        return MotionPlan(target, why, count, share)
    if share <= 1.0 - reject_share and target < current * (1.0 - hysteresis):
        why = f"{evidence}: motion from {target:.4f} of the frame is worth asking about again"
        return MotionPlan(target, why, count, share)
    return MotionPlan(None, f"{evidence}: {current:.4f} of the frame holds", count, share)
