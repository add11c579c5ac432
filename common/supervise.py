"""Supervised background tasks: a task that fails is logged at once with its traceback, counted, and
restarted with capped, jittered backoff; it never dies unseen.

asyncio has no supervisor of its own (a task's exception waits, unlogged, until someone awaits it or
the task is garbage-collected), and the libraries that add one (aiomisc, anyio task groups) end the
whole group on a failure instead of restarting the one task; this small loop does what a daemon wants.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

FailureHook = Callable[[str, BaseException], None]


async def supervise(
    name: str,
    work: Callable[[], Awaitable[None]],
    on_failure: FailureHook,
    *,
    backoff_initial_s: float = 0.5,
    backoff_max_s: float = 30.0,
    healthy_after_s: float = 60.0,
) -> None:
    """Run `work()` until it returns; each time it raises, log, call `on_failure`, wait and run it again.

    The wait doubles after each failure up to `backoff_max_s` (with ±20 % jitter) and starts over once
    a run lasted `healthy_after_s`. Cancelling the supervisor cancels the work.
    """
    backoff = backoff_initial_s
    while True:
        started = time.monotonic()
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if time.monotonic() - started >= healthy_after_s:
                backoff = backoff_initial_s
            wait = backoff * (0.8 + 0.4 * random.random())
            logger.error("task %s failed; restarting it in %.1f s", name, wait, exc_info=err)
            on_failure(name, err)
            await asyncio.sleep(wait)
            backoff = min(backoff_max_s, backoff * 2)


def spawn(
    name: str, work: Callable[[], Awaitable[None]], on_failure: FailureHook, **backoff: float
) -> asyncio.Task[None]:
    """`supervise(work)` as a named task."""
    return asyncio.create_task(supervise(name, work, on_failure, **backoff), name=name)
