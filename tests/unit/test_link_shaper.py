"""The link's timing rules on explicit times: token bucket, delay without reordering, loss, outage windows."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from sim.link.profile import SEGMENT_BYTES, LinkProfile, Outage
from sim.link.shaper import Direction, LinkClock, OutageSchedule, TokenBucket

T0 = 100.0


def direction(
    profile: LinkProfile, rate_kbit: float | None, clock: LinkClock | None = None, seed: int = 1
) -> Direction:
    schedule = OutageSchedule(clock or LinkClock(), profile.outages)
    return Direction(rate_kbit, profile, schedule, random.Random(seed), T0)


def test_token_bucket_passes_the_burst_at_once_then_holds_the_rate() -> None:
    bucket = TokenBucket(rate_bps=1_000_000.0, burst_bits=32_000.0, now=T0)
    assert bucket.reserve(32_000.0, T0) == T0
    starts = [bucket.reserve(SEGMENT_BYTES * 8.0, T0) for _ in range(1000)]
    assert starts == sorted(starts)
    assert starts[-1] - T0 == pytest.approx(1000 * SEGMENT_BYTES * 8.0 / 1_000_000.0)


def test_token_bucket_refills_no_deeper_than_its_burst() -> None:
    bucket = TokenBucket(rate_bps=8000.0, burst_bits=16_000.0, now=T0)
    later = T0 + 3600.0
    assert bucket.reserve(16_000.0, later) == later
    assert bucket.reserve(8000.0, later) == pytest.approx(later + 1.0)


def test_rate_over_many_segments_matches_the_profile() -> None:
    profile = LinkProfile(up_kbit=1000.0)
    link = direction(profile, profile.up_kbit)
    previous, sent = 0.0, 0
    for _ in range(300):
        plan = link.plan(SEGMENT_BYTES, T0, previous)
        previous, sent = plan.deliver_at, sent + SEGMENT_BYTES
    burst_bytes = profile.burst_bits(1000.0) / 8
    assert (sent - burst_bytes) * 8 / (previous - T0) == pytest.approx(1_000_000.0, rel=0.01)


def test_delay_is_half_the_rtt_plus_jitter_and_never_reorders() -> None:
    profile = LinkProfile(rtt_ms=100.0, jitter_ms=40.0)
    link = direction(profile, None)
    previous = 0.0
    delays = []
    for i in range(2000):
        now = T0 + i * 0.001
        plan = link.plan(100, now, previous)
        assert plan.deliver_at >= previous
        delays.append(plan.deliver_at - now)
        previous = plan.deliver_at
    assert min(delays) >= 0.05
    # Jitter really varies the delay; order is kept by waiting behind the previous segment.
    assert max(delays) > 0.08
    assert max(delays) <= 0.05 + 0.04 + 1e-9


def test_loss_fraction_is_within_a_binomial_tolerance_and_costs_an_rto() -> None:
    profile = LinkProfile(loss=0.1, rtt_ms=20.0)
    link = direction(profile, None, seed=7)
    n = 5000
    plans = [link.plan(SEGMENT_BYTES, T0 + i, 0.0) for i in range(n)]
    lost = [p for p in plans if p.lost]
    tolerance = 4 * math.sqrt(n * 0.1 * 0.9)
    assert abs(len(lost) - n * 0.1) <= tolerance
    assert link.stats.segments_lost == len(lost)
    assert link.stats.segments == n
    assert profile.retransmit_s == 0.2
    for i, plan in enumerate(plans):
        expected = 0.01 + (0.2 if plan.lost else 0.0)
        assert plan.deliver_at - (T0 + i) == pytest.approx(expected)


def test_no_loss_no_rate_moves_a_chunk_as_one_unit() -> None:
    link = direction(LinkProfile(), None)
    assert not link.per_segment
    plan = link.plan(10 * SEGMENT_BYTES, T0, 0.0)
    assert (plan.send_at, plan.deliver_at, plan.lost) == (T0, T0, False)
    assert link.stats.segments == 10


def test_outage_windows_count_from_the_clock_start() -> None:
    clock = LinkClock()
    schedule = OutageSchedule(clock, [Outage(start_s=5.0, duration_s=2.0), Outage(start_s=1.0, duration_s=1.0)])
    assert schedule.end_of_outage(T0 + 1.5) is None  # no clock, no window
    clock.start(T0)
    assert schedule.end_of_outage(T0 + 0.99) is None
    assert schedule.end_of_outage(T0 + 1.0) == T0 + 2.0
    assert schedule.end_of_outage(T0 + 2.0) is None
    assert schedule.end_of_outage(T0 + 6.5) == T0 + 7.0


def test_profile_rejects_overlapping_outages_unknown_fields_and_heavy_loss() -> None:
    with pytest.raises(ValidationError, match="outages overlap"):
        LinkProfile(outages=[Outage(start_s=0.0, duration_s=5.0), Outage(start_s=4.0, duration_s=1.0)])
    with pytest.raises(ValidationError):
        LinkProfile.model_validate({"up_kbit": 100, "bandwidth": 5})
    with pytest.raises(ValidationError):
        LinkProfile(loss=0.6)


def test_default_burst_is_twenty_ms_at_the_rate_but_at_least_two_frames() -> None:
    profile = LinkProfile()
    assert profile.burst_bits(100_000.0) == pytest.approx(2_000_000.0)
    assert profile.burst_bits(10.0) == 2 * 1514 * 8
    assert LinkProfile(burst_kbit=64.0).burst_bits(10.0) == 64_000.0
