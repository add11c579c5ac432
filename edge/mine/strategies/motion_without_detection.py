"""Motion without detection: the gate saw change but the detector found nothing, a possible miss.

Sedna never uploads a frame with no boxes, so a class the edge model cannot see at all stays
invisible to the cloud; this rule is how such misses reach it.
"""

from __future__ import annotations

from typing import ClassVar

from edge.mine.base import MiningContext, StrategyVote, kept_detections
from edge.policy.settings import MiningPolicy
from protos.reasons import MinedReasonName

# Below any real doubt about a detection, above the random audit: most such frames are a shadow or
# a leaf, but the few that are not are exactly what the edge model cannot learn from otherwise.
_PRIORITY = 0.5


class MotionWithoutDetection:
    """Fires on frames with motion over at least the policy's area and no detection at or above its band low."""

    name: ClassVar[MinedReasonName] = "motion_without_detection"
    fallback: ClassVar[bool] = False

    def enabled(self, policy: MiningPolicy) -> bool:
        """On when the policy enables it."""
        return policy.motion_without_detection_enabled

    def evaluate(self, ctx: MiningContext, policy: MiningPolicy) -> StrategyVote | None:
        """Vote when the gate reported motion and nothing credible was detected."""
        if not ctx.motion or ctx.motion_area < policy.motion_min_area_fraction or kept_detections(ctx, policy):
            return None
        noise = len(ctx.detections)
        what = "no detection" if noise == 0 else f"{noise} detection(s), all below their band low"
        return StrategyVote(priority=_PRIORITY, detail=f"gate saw change, {what}")
