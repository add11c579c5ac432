"""Source timing rules driven with a fake clock: backoff, the live fps cap, frame selection in files."""

from __future__ import annotations

import random

import pytest

from edge.sources.pacing import Backoff, FrameSelector, RateLimiter


def test_backoff_grows_exponentially_to_its_cap_with_full_jitter():
    backoff = Backoff(0.5, 30.0, random.Random(7))
    assert [backoff.ceiling(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.ceiling(10_000) == 30.0
    delays = [backoff.delay(3) for _ in range(500)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    # Full jitter spreads delays over the whole range, not around the ceiling.
    assert min(delays) < 0.5
    assert max(delays) > 3.5


def test_rate_limiter_passes_half_of_a_ten_fps_stream_capped_at_five():
    limiter = RateLimiter(5.0)
    rng = random.Random(1)
    # A 10 fps camera with a few ms of arrival jitter, for 20 s.
    arrivals = [i / 10 + rng.uniform(-0.004, 0.004) for i in range(200)]
    admitted = sum(limiter.admit(t) for t in arrivals)
    assert admitted == pytest.approx(100, abs=2)


def test_rate_limiter_passes_everything_below_the_cap():
    limiter = RateLimiter(5.0)
    assert all(limiter.admit(i / 4) for i in range(40))


def test_rate_limiter_does_not_burst_after_a_pause():
    limiter = RateLimiter(5.0)
    for i in range(10):
        limiter.admit(i / 5)
    # The camera was silent for 10 s and comes back at 30 fps: still about 5 frames a second.
    resumed = [12.0 + i / 30 for i in range(30)]
    assert sum(limiter.admit(t) for t in resumed) <= 6


def test_rate_limiter_tells_how_long_to_wait_for_the_next_frame():
    limiter = RateLimiter(4.0)
    assert limiter.wait_s(100.0) == 0.0
    assert limiter.admit(100.0)
    assert limiter.wait_s(100.1) == pytest.approx(0.15)
    assert limiter.wait_s(101.0) == 0.0


def test_frame_selector_keeps_every_sixth_frame_of_a_thirty_fps_file_capped_at_five():
    selector = FrameSelector(30.0, 5.0)
    kept = [i for i in range(60) if selector.keep(i)]
    assert kept == [0, 6, 12, 18, 24, 30, 36, 42, 48, 54]
    assert selector.rate == 5.0


def test_frame_selector_keeps_all_frames_of_slow_files_and_folders():
    assert all(FrameSelector(5.0, 5.0).keep(i) for i in range(20))
    assert all(FrameSelector(None, 5.0).keep(i) for i in range(20))
    assert FrameSelector(2.0, 5.0).rate == 2.0
    assert FrameSelector(None, 3.0).rate == 3.0
