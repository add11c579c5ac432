"""Watch-list: classes the operator always wants the cloud to see (people, vehicles...), whatever the score."""

from __future__ import annotations

from typing import ClassVar

from edge.mine.base import MiningContext, StrategyVote, band_closeness, clamp_priority, kept_detections
from edge.policy.settings import MiningPolicy
from protos.reasons import MinedReasonName

# Watch-listed frames go ahead of everything but the most uncertain band samples: the operator
# said these matter. An unsure one goes slightly before a sure one.
_BASE_PRIORITY = 0.9


class WatchList:
    """Fires when a detection of a watch-listed label scores at or above its band's low."""

    name: ClassVar[MinedReasonName] = "watch_list"
    fallback: ClassVar[bool] = False

    def enabled(self, policy: MiningPolicy) -> bool:
        """On when enabled and the list is not empty."""
        return policy.watch_list_enabled and bool(policy.watch_list)

    def evaluate(self, ctx: MiningContext, policy: MiningPolicy) -> StrategyVote | None:
        """Vote for the most uncertain watch-listed detection."""
        watched = [d for d in kept_detections(ctx, policy) if d.label in policy.watch_list]
        if not watched:
            return None
        most_unsure = max(watched, key=lambda d: band_closeness(d.score, policy.band_for(d.label)))
        closeness = band_closeness(most_unsure.score, policy.band_for(most_unsure.label))
        labels = ", ".join(sorted({d.label for d in watched}))
        return StrategyVote(
            priority=clamp_priority(_BASE_PRIORITY + (1.0 - _BASE_PRIORITY) * closeness),
            detail=f"watch-listed {labels}: {len(watched)} detection(s), least sure "
            f"{most_unsure.label} {most_unsure.score:.2f}",
        )
