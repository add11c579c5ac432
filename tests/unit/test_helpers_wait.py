"""The tests' one wait helper: returns what the condition found, and a timeout names what was awaited."""

from __future__ import annotations

import pytest

from tests.helpers.wait import wait_until, wait_until_sync


async def test_wait_until_returns_the_first_true_value_of_a_sync_or_async_condition() -> None:
    calls: list[int] = []

    def third_time() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) == 3 else None

    async def at_once() -> str:
        return "found"

    assert await wait_until(third_time, "the third call", poll_s=0) == 3
    assert await wait_until(at_once, "a coroutine's answer") == "found"


async def test_a_timeout_fails_the_test_naming_what_was_awaited() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"timed out after 0\.05 s waiting for the moon: still dark"):
        await wait_until(lambda: False, lambda: "the moon: still dark", timeout_s=0.05)
    with pytest.raises(pytest.fail.Exception, match=r"waiting for a sync thing"):
        wait_until_sync(lambda: 0, "a sync thing", timeout_s=0.05, poll_s=0.01)
