"""IBT (image-box-threshold), after KubeEdge Sedna's `IBTFilter`.

Sedna (kubeedge/sedna, lib/sedna/algorithms/hard_example_mining/hard_example_mining.py, `IBTFilter`,
defaults threshold_img=0.5, threshold_box=0.5): the share of boxes whose score is <= threshold_box;
the image is hard when that share is >= 1 - threshold_img; no boxes -> not hard. The policy fields'
meanings are stated once, in protos/policy_settings.py and protos/policy.proto, and
tests/unit/test_policy_contract.py checks this strategy against them and Sedna's code. Sedna's boxes are
the detector's output after its confidence threshold; here that threshold is each class's band low,
so boxes below it (noise to every rule) are not counted.
"""

from __future__ import annotations

from typing import ClassVar

from edge.mine.base import MiningContext, StrategyVote, clamp_priority, kept_detections
from edge.policy.settings import MiningPolicy
from protos.reasons import MinedReasonName


class ImageBoxThreshold:
    """Fires when too large a share of the frame's boxes scored low."""

    name: ClassVar[MinedReasonName] = "ibt"
    fallback: ClassVar[bool] = False

    def enabled(self, policy: MiningPolicy) -> bool:
        """On when the policy enables it."""
        return policy.ibt_enabled

    def evaluate(self, ctx: MiningContext, policy: MiningPolicy) -> StrategyVote | None:
        """Sedna's rule on the kept boxes; priority grows with the unsure share (0.25..0.75)."""
        boxes = kept_detections(ctx, policy)
        if not boxes:
            return None
        unsure = sum(1 for d in boxes if d.score <= policy.ibt_box_score_threshold)
        share = unsure / len(boxes)
        needed = 1.0 - policy.ibt_image_fraction_threshold
        if share < needed:
            return None
        return StrategyVote(
            priority=clamp_priority(0.25 + 0.5 * share),
            detail=f"{unsure}/{len(boxes)} boxes scored <= {policy.ibt_box_score_threshold:.2f} "
            f"(hard from {needed:.0%})",
        )
