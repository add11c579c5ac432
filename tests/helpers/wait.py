"""Waiting on a condition of the system under test, bounded, with a message naming what was awaited.

`wait_until` (in a coroutine) and `wait_until_sync` (in plain code) poll `condition` until it returns
something true, and return that; after `timeout_s` the test fails with "timed out after … s waiting for
<what>". `what` may be a function, called only then, to say what the system looked like (a log, the ids
missing). The bound is generous on purpose: a loaded machine is slow, not wrong, and a condition that
holds returns at once.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar, overload

import pytest

T = TypeVar("T")

TIMEOUT_S = 60.0
POLL_S = 0.02


@overload
async def wait_until(
    condition: Callable[[], Coroutine[Any, Any, T | None]],
    what: str | Callable[[], str],
    timeout_s: float = ...,
    poll_s: float = ...,
) -> T: ...


@overload
async def wait_until(
    condition: Callable[[], T | None], what: str | Callable[[], str], timeout_s: float = ..., poll_s: float = ...
) -> T: ...


async def wait_until(
    condition: Callable[[], Any], what: str | Callable[[], str], timeout_s: float = TIMEOUT_S, poll_s: float = POLL_S
) -> Any:
    """Poll `condition` (a function, or a coroutine function) on the running loop until it is true."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return held
        if time.monotonic() >= deadline:
            _timed_out(what, timeout_s)
        await asyncio.sleep(poll_s)


def wait_until_sync(
    condition: Callable[[], T | None],
    what: str | Callable[[], str],
    timeout_s: float = TIMEOUT_S,
    poll_s: float = POLL_S,
) -> T:
    """Poll `condition` from plain (not async) code until it is true."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = condition()
        if held:
            return held
        if time.monotonic() >= deadline:
            _timed_out(what, timeout_s)
        time.sleep(poll_s)


def _timed_out(what: str | Callable[[], str], timeout_s: float) -> NoReturn:
    described = what if isinstance(what, str) else what()
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {described}")
