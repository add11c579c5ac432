"""Random audit: send a random share of the frames the edge would keep to itself.

Frames mined for doubt are a biased sample of what the edge sees; a small unbiased sample of the
frames it is sure about lets the cloud measure the edge's real precision (and tune the bands).
"""

from __future__ import annotations

import random
from typing import ClassVar

from edge.mine.base import MiningContext, StrategyVote
from edge.policy.settings import MiningPolicy
from protos.reasons import MinedReasonName

# Lowest of all: an audit sample is useful on average, never urgent.
_PRIORITY = 0.05


class RandomAudit:
    """Fires, with probability `random_audit_rate`, on a frame with detections that nothing else mined."""

    name: ClassVar[MinedReasonName] = "random_audit"
    fallback: ClassVar[bool] = True

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def enabled(self, policy: MiningPolicy) -> bool:
        """On when enabled with a rate above zero."""
        return policy.random_audit_enabled and policy.random_audit_rate > 0.0

    def evaluate(self, ctx: MiningContext, policy: MiningPolicy) -> StrategyVote | None:
        """Draw once per eligible frame (one with any detection), so the rate is per detected frame."""
        if not ctx.detections:
            return None
        if self._rng.random() >= policy.random_audit_rate:
            return None
        return StrategyVote(priority=_PRIORITY, detail=f"random audit at rate {policy.random_audit_rate:g}")
