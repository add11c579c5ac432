"""Cross-entropy, after KubeEdge Sedna's `CrossEntropyFilter`.

Sedna (kubeedge/sedna, lib/sedna/algorithms/hard_example_mining/hard_example_mining.py,
`CrossEntropyFilter`, default threshold_cross_entropy=0.5) takes a class-probability vector p of
length n and computes confidence = 1 + sum(p * log p) / log(n), i.e. 1 minus the normalised entropy;
the sample is hard when confidence < threshold; empty input -> not hard. The threshold's meaning
is stated once, in protos/policy_settings.py and protos/policy.proto, and
tests/unit/test_policy_contract.py checks this strategy against it and Sedna's code.

Adaptation for a detector, which gives one score per box and no class-probability vector: the vector
is the frame's kept box scores (at or above their band low) divided by their sum. A frame dominated
by one box is confident; a frame whose boxes score alike is not, even if each score is high, which
is why the policy leaves this rule off by default. With fewer than two boxes the entropy is
undefined (Sedna would divide by log 1 = 0), so such frames are not hard; 0 * log 0 counts as 0.
"""

from __future__ import annotations

import math
from typing import ClassVar

from edge.mine.base import MiningContext, StrategyVote, clamp_priority, kept_detections
from edge.policy.settings import MiningPolicy
from protos.reasons import MinedReasonName


def normalised_confidence(scores: list[float]) -> float | None:
    """1 - normalised entropy of `scores` scaled to sum 1; None when fewer than two or all zero."""
    total = sum(scores)
    if len(scores) < 2 or total <= 0.0:
        return None
    probabilities = [score / total for score in scores]
    plogp = sum(p * math.log(p) for p in probabilities if p > 0.0)
    return 1.0 + plogp / math.log(len(scores))


class CrossEntropy:
    """Fires when the frame's box scores are spread too evenly."""

    name: ClassVar[MinedReasonName] = "cross_entropy"
    fallback: ClassVar[bool] = False

    def enabled(self, policy: MiningPolicy) -> bool:
        """On when the policy enables it."""
        return policy.cross_entropy_enabled

    def evaluate(self, ctx: MiningContext, policy: MiningPolicy) -> StrategyVote | None:
        """Sedna's rule on the normalised kept scores; priority grows with entropy (0.25..0.75)."""
        scores = [d.score for d in kept_detections(ctx, policy)]
        confidence = normalised_confidence(scores)
        if confidence is None or confidence >= policy.cross_entropy_threshold:
            return None
        return StrategyVote(
            priority=clamp_priority(0.25 + 0.5 * (1.0 - confidence)),
            detail=f"score confidence {confidence:.2f} < {policy.cross_entropy_threshold:.2f} over {len(scores)} boxes",
        )
