"""The mine stage (hard-example mining): per frame, confident, suspicious or nothing.

Confident detections are acted on locally; suspicious frames go to the cloud with the reason that
made them suspicious and a priority that orders the uplink. See `edge.mine.miner` for how the
strategies in `edge.mine.strategies` are composed.
"""

from edge.mine.base import DecisionKind, MiningContext, MiningDecision, MiningStrategy, StrategyVote
from edge.mine.miner import Miner
from protos.reasons import MinedReasonName

__all__ = [
    "DecisionKind",
    "MinedReasonName",
    "Miner",
    "MiningContext",
    "MiningDecision",
    "MiningStrategy",
    "StrategyVote",
]
