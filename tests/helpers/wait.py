"""Waiting on a condition of the system under test, bounded, with a message naming what was awaited.

`wait_until` (in a coroutine) and `wait_until_sync` (in plain code) poll `condition` until it is true;
after `timeout_s` the test fails with "timed out after … s waiting for <what>". The bound is generous
on purpose: a loaded machine is slow, not wrong, and a condition that holds returns at once.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import pytest

TIMEOUT_S = 60.0
POLL_S = 0.02


async def wait_until(
    condition: Callable[[], object | Awaitable[object]],
    what: str,
    timeout_s: float = TIMEOUT_S,
    poll_s: float = POLL_S,
) -> None:
    """Poll `condition` (a function, or a coroutine function) on the running loop until it is true."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(poll_s)


def wait_until_sync(
    condition: Callable[[], object], what: str, timeout_s: float = TIMEOUT_S, poll_s: float = POLL_S
) -> None:
    """Poll `condition` from plain (not async) code until it is true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)
