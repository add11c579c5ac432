"""Keeps the store bounded: verdicts, thumbnails and edge snapshots older than the retention go, hourly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cloud.store.sqlite import StoreError
from cloud.store.verdicts import VerdictStore

logger = logging.getLogger(__name__)
PRUNE_EVERY_S = 3600.0


class StoreRetention:
    """Prunes `store` of what is older than `retention_s`, at start and every `every_s`."""

    def __init__(self, store: VerdictStore, retention_s: float, every_s: float = PRUNE_EVERY_S) -> None:
        """Nothing runs before `start`."""
        self._store = store
        self._retention_s = retention_s
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start pruning in the background."""
        self._task = asyncio.create_task(self._loop(), name="store-retention")

    async def prune_now(self) -> int:
        """Prune once; returns how many verdicts went."""
        gone = await self._store.prune(time.time() - self._retention_s)
        if gone:
            logger.info("store: %d verdicts older than %.0f s pruned", gone, self._retention_s)
        return gone

    async def _loop(self) -> None:
        while True:
            try:
                await self.prune_now()
            except StoreError:
                logger.exception("store pruning failed; trying again in %.0f s", self._every_s)
            await asyncio.sleep(self._every_s)

    async def stop(self) -> None:
        """Stop pruning (a prune in progress finishes in the store's thread)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
