"""An outbox in memory for the lightweight fleet: the agent's order and byte bound, without a disk.

The fleet runs a thousand of the agent's dispatchers in one process; a real `edge.outbox.Outbox`
each would cost a SQLite file and a thread. This one holds the samples in a dict and answers the
dispatcher's `edge.outbox.SampleQueue` calls in the order `edge.outbox.database` uses (the same sort
keys, including how a missing capture time or a NaN priority is stored), and evicts as it does when
the byte bound is passed. tests/unit/test_memory_outbox.py runs both on the same samples.

What it leaves out, on purpose: durability (a fleet edge lives as long as the run), the age sweep
(a run is far shorter than `outbox.max_age_s`) and corrupt rows (it stores what it serialized).
"""

from __future__ import annotations

import math
import time
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

from edge.metrics import EdgeMetrics
from edge.outbox import DROP_EVICTED, OutboxItem, OutboxStats, ReplayOrder
from protos import sample_pb2

ORDERS = ("priority", "newest_first", "oldest_first")


@dataclass(frozen=True, slots=True)
class _Row:
    """One sample as the outbox table holds it: the columns it is ordered by, and its bytes."""

    sample_id: str
    priority: float  # as stored: NaN ranks as 0.0
    created_at: float  # capture time, unix seconds
    item: OutboxItem

    def by_priority(self) -> tuple[float, float, str]:
        return (self.priority, self.created_at, self.sample_id)

    def by_capture(self) -> tuple[float, str]:
        return (self.created_at, self.sample_id)


class MemoryOutbox:
    """Samples waiting for their verdict, bounded by bytes; a `SampleQueue` for one fleet edge."""

    def __init__(self, name: str, *, max_bytes: int, metrics: EdgeMetrics | None = None) -> None:
        """An empty outbox called `name` in log lines; evictions are counted in `metrics`, as the agent's are."""
        if max_bytes <= 0:
            raise ValueError(f"outbox max_bytes must be positive, got {max_bytes}")
        self._path = Path(f"memory:{name}")
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._rows: dict[str, _Row] = {}
        self._bytes = 0

    @property
    def path(self) -> Path:
        """Not a file: `memory:<name>`, for log lines."""
        return self._path

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._rows

    async def put(self, sample: sample_pb2.Sample) -> list[str]:
        """Keep `sample` (idempotent on sample_id); returns the ids evicted to stay within the byte bound."""
        if not sample.sample_id:
            raise ValueError("a sample without sample_id cannot go in the outbox (it is the idempotency key)")
        if sample.sample_id in self._rows:
            return []
        payload = sample.SerializeToString()
        priority = 0.0 if math.isnan(sample.priority) else sample.priority
        created_at = (
            sample.captured_at.seconds + sample.captured_at.nanos / 1e9
            if sample.HasField("captured_at")
            else time.time()
        )
        item = OutboxItem(sample.sample_id, sample.priority, payload)
        self._rows[sample.sample_id] = _Row(sample.sample_id, priority, created_at, item)
        self._bytes += len(payload)
        return self._evict() if self._bytes > self._max_bytes else []

    async def next_batch(
        self, limit: int, order: ReplayOrder = "priority", exclude: Set[str] = frozenset()
    ) -> list[OutboxItem]:
        """Up to `limit` samples in `order`, leaving out `exclude`; they stay until removed."""
        if order not in ORDERS:
            raise ValueError(f"outbox order {order!r} is not one of {', '.join(ORDERS)}")
        if limit <= 0:
            return []
        rows = self._rows.values()
        if order == "priority":
            ordered = sorted(rows, key=_Row.by_priority, reverse=True)
        else:
            ordered = sorted(rows, key=_Row.by_capture, reverse=order == "newest_first")
        batch: list[OutboxItem] = []
        for row in ordered:
            if len(batch) >= limit:
                break
            if row.sample_id not in exclude:
                batch.append(row.item)
        return batch

    async def remove(self, sample_id: str) -> bool:
        """Delete a sample whose verdict came (or that the cloud refused for good); False when not there."""
        row = self._rows.pop(sample_id, None)
        if row is None:
            return False
        self._bytes -= len(row.item.payload)
        return True

    async def stats(self, now: float | None = None) -> OutboxStats:
        """Samples held, their bytes, and the age of the oldest at `now` (unix seconds, default now)."""
        at = time.time() if now is None else now
        oldest = min((row.created_at for row in self._rows.values()), default=None)
        age = 0.0 if oldest is None else max(0.0, at - oldest)
        return OutboxStats(samples=len(self._rows), bytes=self._bytes, oldest_age_s=age)

    def _evict(self) -> list[str]:
        """Lowest priority, then oldest, until within the bound (may include the sample just put)."""
        victims: list[str] = []
        for row in sorted(self._rows.values(), key=_Row.by_priority):
            if self._bytes <= self._max_bytes:
                break
            victims.append(row.sample_id)
            del self._rows[row.sample_id]
            self._bytes -= len(row.item.payload)
        if victims and self._metrics is not None:
            self._metrics.samples_dropped.labels(DROP_EVICTED).inc(len(victims))
        return victims
