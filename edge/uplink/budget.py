"""The uplink budget: a token bucket in bytes, refilled at the policy's rate up to its burst.

Over any window of T seconds the bucket lets through at most rate·T + burst bytes, so a fleet that
reconnects after an outage replays its backlog at the policy's pace instead of all at once.

One exception keeps big items from starving: an item larger than the whole burst may go when the
bucket is full (otherwise it could never go), and leaves the bucket in debt by the excess (tokens
below zero), which later sends repay. The long-run rate still holds; over a window the bound becomes
rate·T + max(burst, largest item).

Written by hand: it is a dozen lines of arithmetic, and aiolimiter (the usual asyncio limiter, not a
dependency here) refuses an amount above its capacity, waits without a deadline, and reads the event
loop's clock, so it could neither send an oversized sample nor be tested on a fake clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# Shortest wait: float rounding can leave a hair short of n after the computed wait; don't spin on it.
MIN_WAIT_S = 0.001


class TokenBucket:
    """Bytes per second with a burst; the bucket starts full."""

    def __init__(
        self,
        rate_bytes_per_s: float,
        burst_bytes: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`clock` gives seconds (deadlines are on it); `sleep` waits that many of its seconds."""
        _check(rate_bytes_per_s, burst_bytes)
        self._rate = float(rate_bytes_per_s)
        self._burst = float(burst_bytes)
        self._tokens = self._burst
        self._clock = clock
        self._sleep = sleep
        self._last = clock()

    @property
    def rate_bytes_per_s(self) -> float:
        """Refill rate in force."""
        return self._rate

    @property
    def burst_bytes(self) -> float:
        """Bucket depth in force."""
        return self._burst

    @property
    def available(self) -> float:
        """Bytes that may go now; negative while an oversized item's debt is being repaid."""
        self._refill()
        return self._tokens

    def try_take(self, n: float) -> bool:
        """Take `n` bytes if the budget allows it now; never waits."""
        if n < 0:
            raise ValueError(f"cannot take a negative number of bytes ({n})")
        self._refill()
        # An item above the burst goes only from a full bucket: the most tokens there can ever be.
        if n <= self._tokens or (n > self._burst and self._tokens >= self._burst):
            self._tokens -= n
            return True
        return False

    async def take(self, n: float, deadline: float) -> bool:
        """Wait until `n` bytes may go and take them; False if that is not so by `deadline` (on the clock).

        The wait is computed at the rate in force; an `update` during it is seen when it ends.
        """
        while not self.try_take(n):
            now = self._clock()
            if now >= deadline:
                return False
            await self._sleep(max(MIN_WAIT_S, min(self._wait_s(n), deadline - now)))
        return True

    def update(self, rate_bytes_per_s: float, burst_bytes: float) -> None:
        """Apply a new policy: tokens earned so far are kept, up to the new burst."""
        _check(rate_bytes_per_s, burst_bytes)
        self._refill()
        self._rate = float(rate_bytes_per_s)
        self._burst = float(burst_bytes)
        self._tokens = min(self._tokens, self._burst)

    def _wait_s(self, n: float) -> float:
        """Seconds until `n` bytes (or a full bucket, for an oversized item) have accrued."""
        needed = min(n, self._burst) - self._tokens
        return max(needed / self._rate, 0.0)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:  # a clock that steps back earns nothing, and takes nothing away either
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)


def _check(rate_bytes_per_s: float, burst_bytes: float) -> None:
    if not (math.isfinite(rate_bytes_per_s) and rate_bytes_per_s > 0):
        raise ValueError(f"uplink budget rate must be a positive number of bytes/s, got {rate_bytes_per_s}")
    if not (math.isfinite(burst_bytes) and burst_bytes > 0):
        raise ValueError(f"uplink burst must be a positive number of bytes, got {burst_bytes}")
