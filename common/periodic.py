"""Background work repeated every few seconds that survives its own failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

logger = logging.getLogger(__name__)


class FailureCounter(Protocol):
    """Anything counted by `inc()`, e.g. a prometheus_client Counter (or one of its labelled children)."""

    def inc(self) -> None:
        """Count one more."""


class PeriodicTask:
    """Runs `work` every `interval_s` seconds in its own task; a failed run is logged, counted, and the next goes on."""

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[object]],
        interval_s: float,
        *,
        first_run_now: bool = False,
        failures: FailureCounter | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        """`name` names the task and its log lines; the first run is after `interval_s` (at once: `first_run_now`)."""
        if not interval_s > 0:
            raise ValueError(f"{name}: interval_s must be above 0, got {interval_s}")
        self.name = name
        self.interval_s = interval_s
        self.runs = 0
        self.failures = 0
        self._work = work
        self._first_run_now = first_run_now
        self._counter = failures
        self._log = log or logger
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the task is started and not stopped."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task on the running loop (again while running is a no-op)."""
        if not self.running:
            self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the task (a run in progress is cancelled with it) and wait for it to end; again is a no-op."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """The loop itself, until cancelled; for a caller that runs and supervises its tasks itself."""
        if not self._first_run_now:
            await asyncio.sleep(self.interval_s)
        while True:
            await self.run_once()
            # A fixed pause after each run, not a fixed rate: a slow run never piles up behind itself.
            await asyncio.sleep(self.interval_s)

    async def run_once(self) -> bool:
        """One run of `work` now; False when it failed (logged with its traceback and counted)."""
        self.runs += 1
        try:
            await self._work()
        except Exception:
            # Any failure, not only the expected ones: a periodic task that dies stops its work silently.
            self.failures += 1
            if self._counter is not None:
                self._counter.inc()
            self._log.exception("%s failed; trying again in %g s", self.name, self.interval_s)
            return False
        return True
