"""Timing rules of a camera source: reconnect backoff, the fps cap of live streams, file pacing.

Pure functions of the times they are given, so tests drive them with a fake clock.
"""

from __future__ import annotations

import math
import random

# Frames of a live camera jitter around their nominal time; a frame this share of an interval early
# still counts as on time, or a 10 fps camera capped at 5 fps would beat down to about 3.3 fps.
_EARLY_TOLERANCE = 0.25


class Backoff:
    """Capped exponential backoff with full jitter: delay n is uniform in [0, min(max, initial * 2**n)].

    Full jitter (rather than a fixed doubling) spreads the reconnects of many cameras that lost the
    same switch, so they do not all knock on it in step.
    """

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng or random.Random()

    def ceiling(self, failures: int) -> float:
        """Largest delay after `failures` consecutive failures (0 for the first retry)."""
        return min(self.max_s, self.initial_s * 2.0 ** min(failures, 60))

    def delay(self, failures: int) -> float:
        """A random delay before the next attempt."""
        return self._rng.uniform(0.0, self.ceiling(failures))


class RateLimiter:
    """Admits at most `fps` frames per second on average; the others are to be skipped."""

    def __init__(self, fps: float) -> None:
        self.rate = fps
        self.interval_s = 1.0 / fps
        self._next_due: float | None = None

    def admit(self, now: float) -> bool:
        """Whether a frame arriving at `now` (monotonic seconds) is passed on."""
        slack = _EARLY_TOLERANCE * self.interval_s
        if self._next_due is not None and now < self._next_due - slack:
            return False
        due = now if self._next_due is None else self._next_due
        # Keep the average rate, but after a pause start afresh rather than let a burst through.
        self._next_due = max(due + self.interval_s, now + self.interval_s - slack)
        return True

    def wait_s(self, now: float) -> float:
        """How long to wait from `now` until the next frame is due (0 when it is already due)."""
        return 0.0 if self._next_due is None else max(0.0, self._next_due - now)


class FrameSelector:
    """Which frames of a file recorded at `native_fps` to keep so they come at most `fps_cap` a second.

    Decided on the file's own timeline (frame index / native fps), so the same frames are kept
    whether the file plays in real time or as fast as possible.
    """

    def __init__(self, native_fps: float | None, fps_cap: float) -> None:
        self._native_fps = native_fps
        self._fps_cap = fps_cap
        self._next_t = 0.0

    @property
    def rate(self) -> float:
        """Frames per second after selection."""
        return self._fps_cap if self._native_fps is None else min(self._native_fps, self._fps_cap)

    def keep(self, index: int) -> bool:
        """Whether frame `index` of the file is kept."""
        if self._native_fps is None or self._native_fps <= self._fps_cap:
            return True
        t = index / self._native_fps
        if t + 1e-9 < self._next_t:
            return False
        self._next_t = (math.floor(t * self._fps_cap + 1e-9) + 1) / self._fps_cap
        return True
