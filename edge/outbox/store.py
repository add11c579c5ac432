"""Outbox: the agent's zero-loss queue of samples for the cloud, as coroutines over one SQLite thread.

Every suspicious sample is put here before any send and leaves only when its verdict came or the
cloud refused it for good (`remove`), when it grew too old (`expire`), or when the byte bound
evicted it for a more urgent one.
sqlite3 blocks, so all of its calls run in one dedicated thread (`common.sqlite.SqliteThread`, which
owns the connection, statements in submission order); the event loop only serializes and parses nothing
larger than one message. Schema in `edge.outbox.schema`, durability in `edge.outbox.database`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Set
from pathlib import Path
from typing import ParamSpec, TypeVar

from common.sqlite import SqliteThread
from edge.metrics import EdgeMetrics
from edge.outbox.database import OutboxDatabase, OutboxError, OutboxItem, OutboxStats, ReplayOrder
from protos import sample_pb2

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
# Reasons on EdgeMetrics.samples_dropped.
DROP_EVICTED = "outbox_evicted"
DROP_EXPIRED = "outbox_expired"
DROP_CORRUPT = "outbox_corrupt"
# A full outbox evicts on every put; say so in the log at most this often (the metric counts each).
EVICTION_LOG_INTERVAL_S = 60.0


class Outbox:
    """Samples waiting for their verdict, bounded by bytes and age; all methods are safe on the loop."""

    def __init__(self, path: Path, *, max_bytes: int, max_age_s: float, metrics: EdgeMetrics | None = None) -> None:
        """Use the SQLite file at `path` (created with its folder on first use)."""
        if max_bytes <= 0:
            raise ValueError(f"outbox max_bytes must be positive, got {max_bytes}")
        if not max_age_s > 0:
            raise ValueError(f"outbox max_age_s must be positive, got {max_age_s}")
        self._db = OutboxDatabase(Path(path), max_bytes)
        self._max_age_s = max_age_s
        self._metrics = metrics
        self._thread = SqliteThread(self._db.path, "outbox", OutboxError)
        self._evicted_unreported = 0
        self._eviction_reported_at = -math.inf

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    async def open(self) -> None:
        """Open (or create) the file now, so a bad path fails at start-up rather than at the first sample."""
        await self._run("open", self._db.connect)

    async def put(self, sample: sample_pb2.Sample) -> list[str]:
        """Store `sample` durably (idempotent on sample_id); returns the ids evicted to make room.

        When the put returns, the sample is on disk. The evicted ids are the lowest-priority, then
        oldest, samples; they may include this sample's own id when it ranks below all the others.
        """
        if not sample.sample_id:
            raise ValueError("a sample without sample_id cannot go in the outbox (it is the idempotency key)")
        data = sample.SerializeToString()
        priority, captured_at = _priority(sample), _captured_at(sample)
        return await self._run("put", self._put_counted, sample.sample_id, priority, captured_at, data)

    async def next_batch(
        self, limit: int, order: ReplayOrder = "priority", exclude: Set[str] = frozenset()
    ) -> list[OutboxItem]:
        """Up to `limit` samples to send, in `order`, leaving out the ids in `exclude` (e.g. in flight).

        "priority": most uncertain (highest priority) first, then newest; "newest_first" and
        "oldest_first": by capture time, for replaying a backlog. The samples stay in the outbox
        until removed. Rows that do not parse are deleted and counted (reason "outbox_corrupt").
        """
        if order not in ("priority", "newest_first", "oldest_first"):
            raise ValueError(f"outbox order {order!r} is not one of priority, newest_first, oldest_first")
        if limit <= 0:
            return []
        # A copy: the caller's set (often an in-flight dict's keys) keeps changing on the loop.
        result = await self._run("next_batch", self._db.next_batch, limit, order, frozenset(exclude))
        if result.corrupt:
            self._count(DROP_CORRUPT, len(result.corrupt))
        return result.samples

    async def remove(self, sample_id: str) -> bool:
        """Delete a sample whose verdict came (or that the cloud refused for good); False when not there."""
        return await self._run("remove", self._db.remove, sample_id)

    async def expire(self, now: float | None = None) -> int:
        """Delete samples captured more than max_age_s before `now` (unix seconds, default now); returns how many."""
        at = time.time() if now is None else now
        expired = await self._run("expire", self._db.expire, at - self._max_age_s)
        if expired:
            self._count(DROP_EXPIRED, len(expired))
            logger.warning(
                "outbox %s: %d samples older than %.0f s expired unsent", self.path, len(expired), self._max_age_s
            )
        return len(expired)

    async def stats(self, now: float | None = None) -> OutboxStats:
        """Samples held, their bytes, and the age of the oldest at `now` (unix seconds, default now)."""
        return await self._run("stats", self._db.stats, time.time() if now is None else now)

    async def close(self) -> None:
        """Finish queued calls, close the file and its thread; again is a no-op."""
        await self._thread.close(self._db.close)

    def _put_counted(self, sample_id: str, priority: float, created_at: float, data: bytes) -> list[str]:
        # On the SQLite thread: evicted rows are counted where they go, also when the caller awaiting this
        # put is cancelled meanwhile (the agent's shutdown deadline), as the put still completes there.
        result = self._db.put(sample_id, priority, created_at, data)
        if result.evicted:
            self._count(DROP_EVICTED, len(result.evicted))
            self._report_eviction(len(result.evicted))
        return result.evicted

    def _report_eviction(self, n: int) -> None:
        self._evicted_unreported += n
        now = time.monotonic()
        if now - self._eviction_reported_at >= EVICTION_LOG_INTERVAL_S:
            logger.warning(
                "outbox %s is full (%d bytes): %d lowest-priority samples evicted since the last report",
                self.path,
                self._db.max_bytes,
                self._evicted_unreported,
            )
            self._evicted_unreported = 0
            self._eviction_reported_at = now

    def _count(self, reason: str, n: int) -> None:
        if self._metrics is not None:
            self._metrics.samples_dropped.labels(reason).inc(n)

    async def _run(self, operation: str, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._thread.run(operation, call, *args, **kwargs)


def _priority(sample: sample_pb2.Sample) -> float:
    # SQLite stores NaN as NULL, which the schema refuses; a NaN priority ranks like no priority.
    return sample.priority if not math.isnan(sample.priority) else 0.0


def _captured_at(sample: sample_pb2.Sample) -> float:
    # A sample without a capture time ages from when it was stored.
    if not sample.HasField("captured_at"):
        return time.time()
    return sample.captured_at.seconds + sample.captured_at.nanos / 1e9
