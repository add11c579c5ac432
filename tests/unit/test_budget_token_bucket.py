"""The uplink's token bucket on a fake clock: the rate holds over long runs, bursts, oversized items, updates."""

from __future__ import annotations

import random

import pytest

from edge.uplink.budget import TokenBucket

RATE = 10_000.0
BURST = 25_000.0


class FakeClock:
    """Seconds that pass only when someone sleeps on them."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def bucket(clock: FakeClock, rate: float = RATE, burst: float = BURST) -> TokenBucket:
    return TokenBucket(rate, burst, clock=clock, sleep=clock.sleep)


def test_a_new_bucket_is_full_and_lets_one_burst_through_at_once() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    assert tokens.available == BURST
    assert tokens.try_take(20_000)
    assert tokens.try_take(5_000)
    assert not tokens.try_take(1)
    assert tokens.available == 0


def test_tokens_refill_at_the_rate_and_never_above_the_burst() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    assert tokens.try_take(BURST)
    clock.now += 0.5
    assert tokens.available == pytest.approx(5_000)
    assert not tokens.try_take(6_000)
    assert tokens.try_take(5_000)
    clock.now += 3600
    assert tokens.available == BURST


async def test_take_waits_for_the_tokens_it_needs() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    assert tokens.try_take(BURST)
    start = clock.now

    assert await tokens.take(15_000, deadline=start + 10)
    assert clock.now - start == pytest.approx(1.5, abs=0.002)


async def test_take_gives_up_at_the_deadline_without_taking_anything() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    assert tokens.try_take(BURST)
    start = clock.now

    assert not await tokens.take(20_000, deadline=start + 1.0)
    assert clock.now - start == pytest.approx(1.0, abs=0.002)
    assert tokens.available == pytest.approx(10_000, abs=20)  # the second's refill is still there


async def test_bytes_taken_over_a_long_run_stay_within_rate_times_t_plus_burst() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    rng = random.Random(7)
    start = clock.now
    taken: list[tuple[float, int]] = []  # (when, bytes)
    while clock.now - start < 600:
        size = rng.randint(1, int(BURST))
        assert await tokens.take(size, deadline=clock.now + 60)
        taken.append((clock.now, size))
        if rng.random() < 0.05:  # the sender is sometimes idle, and the bucket fills again
            clock.now += rng.uniform(0, 5)

    elapsed = clock.now - start
    total = sum(size for _, size in taken)
    assert total <= RATE * elapsed + BURST
    assert total >= RATE * elapsed * 0.6  # the budget is used, not just respected
    # The bound holds over every window, not only from the start: slide over the recorded takes.
    prefix = [0]
    for _, size in taken:
        prefix.append(prefix[-1] + size)
    for i in range(0, len(taken), 7):
        for j in range(i, len(taken), 11):
            window_bytes = prefix[j + 1] - prefix[i]
            assert window_bytes <= RATE * (taken[j][0] - taken[i][0]) + BURST + 1e-6


async def test_a_greedy_sender_gets_the_rate_once_the_burst_is_spent() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    start = clock.now
    total = 0
    while clock.now - start < 100:
        assert await tokens.take(1_000, deadline=clock.now + 1)
        total += 1_000
    assert total == pytest.approx(RATE * (clock.now - start) + BURST, rel=0.01)


async def test_an_item_larger_than_the_burst_goes_from_a_full_bucket_and_leaves_a_debt() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    assert tokens.try_take(60_000)  # full bucket: allowed, else it could never go
    assert tokens.available == pytest.approx(BURST - 60_000)

    # Another oversized item waits for the debt to be repaid and the bucket to be full again.
    start = clock.now
    assert await tokens.take(60_000, deadline=start + 60)
    # The debt (35 kB) and a full bucket (25 kB) take 6 s: over the run, rate·T + the largest item.
    assert clock.now - start == pytest.approx(60_000 / RATE, abs=0.002)


def test_an_oversized_item_is_refused_while_the_bucket_is_not_full() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    assert tokens.try_take(1)
    assert not tokens.try_take(30_000)
    clock.now += 0.001
    assert tokens.try_take(30_000)


def test_update_keeps_earned_tokens_up_to_the_new_burst_and_refills_at_the_new_rate() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    tokens.update(RATE, 5_000)
    assert tokens.available == 5_000
    assert tokens.burst_bytes == 5_000

    assert tokens.try_take(5_000)
    tokens.update(1_000, 50_000)
    assert tokens.available == 0  # a bigger bucket is not a gift of tokens
    clock.now += 2
    assert tokens.available == pytest.approx(2_000)
    assert tokens.rate_bytes_per_s == 1_000


def test_update_counts_time_before_it_at_the_old_rate() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    assert tokens.try_take(BURST)
    clock.now += 1
    tokens.update(100, BURST)
    assert tokens.available == pytest.approx(RATE)


async def test_a_slower_rate_set_during_a_wait_is_honoured_when_the_wait_ends() -> None:
    clock = FakeClock()

    async def sleep_with_a_policy_change_halfway(seconds: float) -> None:
        clock.now += seconds / 2
        if tokens.rate_bytes_per_s == RATE:
            tokens.update(RATE / 10, BURST)
        clock.now += seconds / 2

    tokens = TokenBucket(RATE, BURST, clock=clock, sleep=sleep_with_a_policy_change_halfway)
    assert tokens.try_take(BURST)
    start = clock.now
    assert await tokens.take(20_000, deadline=start + 60)
    # 1 s at RATE (10 kB), then 10 kB more at RATE/10.
    assert clock.now - start == pytest.approx(1 + 10, abs=0.01)


def test_a_clock_that_steps_back_earns_nothing() -> None:
    clock = FakeClock()
    tokens = bucket(clock)
    assert tokens.try_take(BURST)
    clock.now -= 100
    assert tokens.available == 0
    clock.now += 1
    assert tokens.available == pytest.approx(RATE)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (float("nan"), 1), (1, float("inf"))])
def test_a_budget_that_is_not_positive_and_finite_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="uplink"):
        TokenBucket(rate, burst)


def test_taking_a_negative_number_of_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        bucket(FakeClock()).try_take(-1)
