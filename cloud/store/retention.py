"""Keeps the store bounded: verdicts, thumbnails and edge snapshots older than the retention go, hourly."""

from __future__ import annotations

import logging
import time

from cloud.store.verdicts import VerdictStore
from common.periodic import FailureCounter, PeriodicTask

logger = logging.getLogger(__name__)
PRUNE_EVERY_S = 3600.0


class StoreRetention:
    """Prunes `store` of what is older than `retention_s`, at start and every `every_s`."""

    def __init__(
        self,
        store: VerdictStore,
        retention_s: float,
        every_s: float = PRUNE_EVERY_S,
        failures: FailureCounter | None = None,
    ) -> None:
        """Nothing runs before `start`; `failures` counts the prunes that failed."""
        self._store = store
        self._retention_s = retention_s
        self._periodic = PeriodicTask(
            "store-retention", self.prune_now, every_s, first_run_now=True, failures=failures, log=logger
        )

    def start(self) -> None:
        """Start pruning in the background."""
        self._periodic.start()

    async def prune_now(self) -> int:
        """Prune once; returns how many verdicts went."""
        gone = await self._store.prune(time.time() - self._retention_s)
        if gone:
            logger.info("store: %d verdicts older than %.0f s pruned", gone, self._retention_s)
        return gone

    async def stop(self) -> None:
        """Stop pruning (a prune in progress finishes in the store's thread)."""
        await self._periodic.stop()
