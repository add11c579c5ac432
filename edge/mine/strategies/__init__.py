"""Mining strategies, one rule per module, and the precedence the miner asks them in."""

from __future__ import annotations

import random

from edge.mine.base import MiningStrategy
from edge.mine.strategies.cross_entropy import CrossEntropy
from edge.mine.strategies.ibt import ImageBoxThreshold
from edge.mine.strategies.motion_without_detection import MotionWithoutDetection
from edge.mine.strategies.random_audit import RandomAudit
from edge.mine.strategies.uncertainty_band import UncertaintyBand
from edge.mine.strategies.watch_list import WatchList
from protos.reasons import MinedReasonName

PRECEDENCE: tuple[MinedReasonName, ...] = (
    "watch_list",
    "uncertainty_band",
    "ibt",
    "cross_entropy",
    "motion_without_detection",
    "random_audit",
)
"""Order of the strategies: the first that fires names the reason of a suspicious frame."""


def default_strategies(rng: random.Random) -> tuple[MiningStrategy, ...]:
    """Every built-in strategy, in `PRECEDENCE` order; `rng` drives the random audit."""
    return (
        WatchList(),
        UncertaintyBand(),
        ImageBoxThreshold(),
        CrossEntropy(),
        MotionWithoutDetection(),
        RandomAudit(rng),
    )


__all__ = [
    "PRECEDENCE",
    "CrossEntropy",
    "ImageBoxThreshold",
    "MotionWithoutDetection",
    "RandomAudit",
    "UncertaintyBand",
    "WatchList",
    "default_strategies",
]
