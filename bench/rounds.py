"""Interleaved timing: several measurements taken in turn, round after round, under one bound.

A machine shared with other work (a training job, a browser) slows down and speeds up over seconds.
Timing A for a minute and then B for a minute would put that drift into the A/B ratio; taking one
pass of each in every round puts it into both alike. The order inside a round is reversed every
other round (A B, B A, A B...) so that neither side always runs right after the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Step:
    """One measurement: calls timed one by one, each worth ``frames`` frames, every round."""

    name: str
    calls: Sequence[Callable[[], object]]
    frames: Sequence[int]
    call_seconds: list[float] = field(default_factory=list)
    call_frames: list[int] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.calls or len(self.calls) != len(self.frames):
            raise ValueError(f"step {self.name!r}: needs one frame count per call, and at least one call")

    def run_round(self, record: bool) -> None:
        """Make every call once; keep the timings when ``record`` (not during warm-up)."""
        total = 0.0
        for call, frames in zip(self.calls, self.frames, strict=True):
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            total += elapsed
            if record:
                self.call_seconds.append(elapsed)
                self.call_frames.append(frames)
        if record:
            self.round_seconds.append(total)

    def stats(self) -> dict[str, float]:
        """Frames/s (median over rounds) and p50/p95 milliseconds per frame (over calls)."""
        frames_per_round = sum(self.frames)
        per_frame_ms = 1000.0 * np.asarray(self.call_seconds) / np.asarray(self.call_frames)
        return {
            "fps": float(np.median(frames_per_round / np.asarray(self.round_seconds))),
            "ms_per_frame": float(np.median(np.asarray(self.round_seconds) * 1000.0 / frames_per_round)),
            "p50_ms": float(np.percentile(per_frame_ms, 50)),
            "p95_ms": float(np.percentile(per_frame_ms, 95)),
        }


@dataclass
class RoundsResult:
    """How many rounds ran and for how long."""

    rounds: int
    seconds: float


def run_rounds(
    groups: Sequence[Sequence[Step]],
    *,
    max_rounds: int,
    seconds: float,
    on_round: Callable[[int], None] | None = None,
) -> RoundsResult:
    """Run one untimed warm-up round, then rounds until ``max_rounds`` or ``seconds`` is spent.

    ``groups`` are the steps to compare side by side (e.g. runtime and raw for one batch size); in
    each round every group runs its steps, in reverse order every other round. A round is never cut
    short, so the run may overrun ``seconds`` by up to one round; at least one round is recorded.
    """
    if max_rounds < 1:
        raise ValueError(f"max_rounds is {max_rounds}; at least one round is needed")
    for group in groups:
        for step in group:
            step.run_round(record=False)
    start = time.perf_counter()
    deadline = start + seconds
    done = 0
    while done < max_rounds:
        for group in groups:
            ordered = group if done % 2 == 0 else list(reversed(group))
            for step in ordered:
                step.run_round(record=True)
        done += 1
        if on_round is not None:
            on_round(done)
        if time.perf_counter() >= deadline:
            break
    return RoundsResult(rounds=done, seconds=time.perf_counter() - start)
