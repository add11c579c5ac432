"""Uncertainty band: a detection scored in its class's [low, high] is too unsure to act on locally.

Above `high` a detection is confident (an event on the edge); below `low` it is noise and ignored.
The band is per class (`MiningPolicy.bands`, else `default_band`) so the cloud can tune each class.
"""

from __future__ import annotations

from typing import ClassVar

from edge.mine.base import MiningContext, StrategyVote, band_closeness, clamp_priority, in_band
from edge.policy.settings import MiningPolicy
from protos.reasons import MinedReasonName

# Even a score at a band edge outranks the random audit (0.05): it is a real doubt.
_EDGE_PRIORITY = 0.1


class UncertaintyBand:
    """Fires when any detection sits inside its class's band; priority 1 at the band's middle."""

    name: ClassVar[MinedReasonName] = "uncertainty_band"
    fallback: ClassVar[bool] = False

    def enabled(self, policy: MiningPolicy) -> bool:
        """On when the policy enables it."""
        return policy.uncertainty_band_enabled

    def evaluate(self, ctx: MiningContext, policy: MiningPolicy) -> StrategyVote | None:
        """Vote for the in-band detection closest to its band's middle."""
        unsure = [d for d in ctx.detections if in_band(d, policy.band_for(d.label))]
        if not unsure:
            return None
        closest = max(unsure, key=lambda d: band_closeness(d.score, policy.band_for(d.label)))
        band = policy.band_for(closest.label)
        closeness = band_closeness(closest.score, band)
        more = f" (+{len(unsure) - 1} more in band)" if len(unsure) > 1 else ""
        return StrategyVote(
            priority=clamp_priority(_EDGE_PRIORITY + (1.0 - _EDGE_PRIORITY) * closeness),
            detail=f"{closest.label} {closest.score:.2f} in band [{band.low:.2f}, {band.high:.2f}]{more}",
        )
