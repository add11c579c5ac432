"""PeriodicTask: runs again and again, survives the failures of its work, counts and logs them."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.periodic import PeriodicTask

WAIT_S = 10.0  # a guard against a hang, not a measured time


class Tally:
    def __init__(self) -> None:
        self.count = 0

    def inc(self) -> None:
        self.count += 1


async def test_a_failing_run_is_logged_counted_and_the_next_goes_ahead(caplog: pytest.LogCaptureFixture) -> None:
    third = asyncio.Event()
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError(f"store away ({calls})")
        third.set()

    tally = Tally()
    task = PeriodicTask("flaky", flaky, 0.001, failures=tally)
    task.start()
    await asyncio.wait_for(third.wait(), WAIT_S)
    await task.stop()
    assert (task.failures, tally.count) == (2, 2)
    assert task.runs >= 3
    failed = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert [record.getMessage() for record in failed[:2]] == ["flaky failed; trying again in 0.001 s"] * 2
    assert all(record.exc_info is not None for record in failed)
    assert "store away (1)" in caplog.text


async def test_first_run_now_does_not_wait_for_the_interval() -> None:
    ran = asyncio.Event()

    async def work() -> None:
        ran.set()

    task = PeriodicTask("at-start", work, 3600, first_run_now=True)
    task.start()
    await asyncio.wait_for(ran.wait(), WAIT_S)
    assert task.running
    await task.stop()
    assert not task.running


async def test_stop_cancels_a_run_in_progress_without_counting_a_failure() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = PeriodicTask("slow", forever, 0.001, first_run_now=True)
    task.start()
    await asyncio.wait_for(started.wait(), WAIT_S)
    await task.stop()
    await task.stop()  # again: a no-op
    assert (task.runs, task.failures) == (1, 0)


async def test_run_once_reports_the_outcome() -> None:
    async def broken() -> None:
        raise ValueError("bad row")

    task = PeriodicTask("once", broken, 60)
    assert await task.run_once() is False
    assert (task.runs, task.failures) == (1, 1)
    await task.stop()  # never started: nothing to stop


def test_the_interval_must_be_positive() -> None:
    async def work() -> None:
        return None

    with pytest.raises(ValueError, match="zero: interval_s must be above 0"):
        PeriodicTask("zero", work, 0)
