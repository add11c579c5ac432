"""The timing rules of one emulated link, free of sockets and of the wall clock (times are passed in).

A direction (edge -> cloud or back) is shared by every connection of its edge: one token bucket, one
set of counters. Each connection keeps its own last delivery time so that delay and jitter never
reorder its bytes: a segment is delivered at max(previous delivery, sent + one-way delay + jitter).
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field

from sim.link.profile import SEGMENT_BYTES, LinkProfile, Outage

# Per-second series are capped so a link left running for days cannot grow without bound.
MAX_SERIES_SECONDS = 7 * 24 * 3600


class LinkClock:
    """t=0 for the outage windows of every link; before start() no window applies."""

    def __init__(self) -> None:
        """A clock that has not started."""
        self.t0: float | None = None

    def start(self, now: float) -> None:
        """Set t=0 at monotonic time `now` (again: restarts the windows and the series)."""
        self.t0 = now


class OutageSchedule:
    """The outage windows of one link against the shared clock."""

    def __init__(self, clock: LinkClock, outages: list[Outage]) -> None:
        """Windows are seconds from the clock's start."""
        self.clock = clock
        self.outages = sorted(outages, key=lambda o: o.start_s)

    def end_of_outage(self, now: float) -> float | None:
        """The monotonic time the window containing `now` ends, or None when the link is up."""
        if self.clock.t0 is None:
            return None
        elapsed = now - self.clock.t0
        for outage in self.outages:
            if outage.start_s <= elapsed < outage.end_s:
                return self.clock.t0 + outage.end_s
        return None


class TokenBucket:
    """A token bucket in bits that hands out start times (reservations) instead of blocking."""

    def __init__(self, rate_bps: float, burst_bits: float, now: float) -> None:
        """Starts full."""
        self.rate_bps = rate_bps
        self.burst_bits = burst_bits
        self._tokens = burst_bits
        self._last = now

    def reserve(self, bits: float, now: float) -> float:
        """Take `bits`; returns when they may leave (now, or later once the debt is repaid at the rate)."""
        now = max(now, self._last)
        self._tokens = min(self.burst_bits, self._tokens + (now - self._last) * self.rate_bps)
        self._last = now
        self._tokens -= bits
        if self._tokens >= 0:
            return now
        return now - self._tokens / self.rate_bps


@dataclass
class DirectionStats:
    """Counters of one direction; written by the proxy thread, read by anyone (copy under the lock)."""

    bytes: int = 0
    segments: int = 0
    segments_lost: int = 0
    series: list[int] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def delivered(self, size: int, now: float, clock: LinkClock) -> None:
        """Count `size` bytes delivered at `now` (into the per-second series once the clock started)."""
        with self.lock:
            self.bytes += size
            if self.first_at is None:
                self.first_at = now
            self.last_at = now
            if clock.t0 is None or now < clock.t0:
                return
            second = int(now - clock.t0)
            if second >= MAX_SERIES_SECONDS:
                return
            if second >= len(self.series):
                self.series.extend([0] * (second + 1 - len(self.series)))
            self.series[second] += size

    def snapshot(self) -> DirectionSnapshot:
        """A consistent copy of the counters."""
        with self.lock:
            return DirectionSnapshot(
                self.bytes, self.segments, self.segments_lost, list(self.series), self.first_at, self.last_at
            )


@dataclass(frozen=True)
class DirectionSnapshot:
    """DirectionStats at one moment; times are monotonic."""

    bytes: int
    segments: int
    segments_lost: int
    series: list[int]
    first_at: float | None
    last_at: float | None


@dataclass(frozen=True)
class Plan:
    """When one segment leaves the sender and when it reaches the other side."""

    send_at: float
    deliver_at: float
    lost: bool


class Direction:
    """The shaping rules of one direction of one edge's link."""

    def __init__(
        self,
        rate_kbit: float | None,
        profile: LinkProfile,
        outages: OutageSchedule,
        rng: random.Random,
        now: float,
        shape_rate_and_loss: bool = True,
    ) -> None:
        """`shape_rate_and_loss=False` keeps only delay and jitter (the kernel does the rest in netns mode)."""
        self.bucket = (
            TokenBucket(rate_kbit * 1000.0, profile.burst_bits(rate_kbit), now)
            if rate_kbit is not None and shape_rate_and_loss
            else None
        )
        self.one_way_s = profile.rtt_ms / 2000.0
        self.jitter_s = profile.jitter_ms / 1000.0
        self.loss = profile.loss if shape_rate_and_loss else 0.0
        self.retransmit_s = profile.retransmit_s
        self.outages = outages
        self.rng = rng
        self.stats = DirectionStats()

    @property
    def per_segment(self) -> bool:
        """Whether data must be cut into segments (rate or loss apply); otherwise a chunk moves as one unit."""
        return self.bucket is not None or self.loss > 0.0

    def plan(self, size: int, now: float, previous_delivery: float) -> Plan:
        """Schedule one unit of `size` bytes (one segment, or a chunk when not per_segment)."""
        segments = max(1, math.ceil(size / SEGMENT_BYTES))
        lost = self.loss > 0.0 and self.rng.random() < self.loss
        send_at = now
        if self.bucket is not None:
            send_at = self.bucket.reserve(size * 8.0, now)
            if lost:
                # The retransmission crosses the link again and pays for it.
                self.bucket.reserve(size * 8.0, send_at)
        delay = self.one_way_s + (self.rng.uniform(0.0, self.jitter_s) if self.jitter_s > 0 else 0.0)
        if lost:
            delay += self.retransmit_s
        with self.stats.lock:
            self.stats.segments += segments
            self.stats.segments_lost += int(lost)
        return Plan(send_at=send_at, deliver_at=max(previous_delivery, send_at + delay), lost=lost)
