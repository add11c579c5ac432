"""What the miner reads, what it answers, and what every mining strategy implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from common.detect import Detection
from edge.policy.settings import Band, MiningPolicy
from protos.reasons import MinedReasonName

DecisionKind = Literal["confident", "suspicious", "nothing"]


@dataclass(frozen=True, slots=True)
class MiningContext:
    """One frame as the miner sees it: where it came from, whether the gate saw change, what was detected."""

    camera_id: str
    frame_seq: int
    motion: bool
    detections: Sequence[Detection]
    captured_at: float = 0.0  # unix seconds; the resend interval is counted in capture time
    motion_area: float = 0.0  # share (0-1) of the frame the gate's changed region covers


@dataclass(frozen=True, slots=True)
class MiningDecision:
    """The miner's verdict on one frame.

    `reason` is the strategy that decided (None unless suspicious); `priority` (0..1, higher is sent
    first) is the highest any firing strategy gave; `confident` holds the detections above their
    band, to act on locally, whatever the kind. `held_back` names the rule that kept a suspicious
    frame from being sent (e.g. "resend_interval"); the frame is then not suspicious.
    """

    kind: DecisionKind
    reason: MinedReasonName | None
    detail: str
    priority: float
    confident: tuple[Detection, ...]
    held_back: str | None = None


@dataclass(frozen=True, slots=True)
class StrategyVote:
    """A strategy's finding that the frame is suspicious: how urgent (0..1) and why, for people."""

    priority: float
    detail: str


class MiningStrategy(Protocol):
    """One hard-example rule. The miner asks each in precedence order."""

    name: ClassVar[MinedReasonName]
    # A fallback runs only when no other strategy fired (e.g. the random audit of quiet frames).
    fallback: ClassVar[bool]

    def enabled(self, policy: MiningPolicy) -> bool:
        """Whether `policy` turns this strategy on."""
        ...

    def evaluate(self, ctx: MiningContext, policy: MiningPolicy) -> StrategyVote | None:
        """A vote when the frame is suspicious by this rule, else None."""
        ...


def kept_detections(ctx: MiningContext, policy: MiningPolicy) -> list[Detection]:
    """Detections at or above their class's band low; those below are treated as noise by every rule."""
    return [d for d in ctx.detections if d.score >= policy.band_for(d.label).low]


def in_band(detection: Detection, band: Band) -> bool:
    """Whether the score lies in [low, high]."""
    return band.low <= detection.score <= band.high


def band_closeness(score: float, band: Band) -> float:
    """1 at the band's middle, falling linearly to 0 at its edges and beyond."""
    half_width = (band.high - band.low) / 2
    if half_width <= 0.0:
        return 1.0 if score == band.low else 0.0
    middle = (band.low + band.high) / 2
    return max(0.0, 1.0 - abs(score - middle) / half_width)


def clamp_priority(value: float) -> float:
    """Keep a priority inside 0..1."""
    return min(1.0, max(0.0, value))
