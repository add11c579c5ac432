"""What the dispatcher reads an outbox through: exactly the four things it uses, and nothing else.

The agent's `Outbox` (SQLite, one thread) is the implementation that keeps the delivery promise on
disk. The protocol exists so that something else with the same ordering can stand in where a disk
is not the point: the lightweight fleet (`sim.fleet.memory_outbox`) runs a thousand dispatchers in
one process, which would cost a thread and a SQLite file each.

An implementation must order `next_batch` as `Outbox` does (see `edge.outbox.database`):
"priority" is highest priority first, then newest capture, then sample_id descending;
"newest_first" is newest capture first, then sample_id descending; "oldest_first" the reverse of it.
It raises `OutboxError` for a failure the dispatcher should wait out.
"""

from __future__ import annotations

from collections.abc import Set
from pathlib import Path
from typing import Protocol

from edge.outbox.database import OutboxItem, OutboxStats, ReplayOrder


class SampleQueue(Protocol):
    """Samples kept until their verdict, as the dispatcher sees them."""

    @property
    def path(self) -> Path:
        """Where the samples are kept, for log lines."""
        ...

    async def stats(self) -> OutboxStats:
        """Samples held, their bytes, and the age of the oldest by capture time."""
        ...

    async def next_batch(self, limit: int, order: ReplayOrder, exclude: Set[str]) -> list[OutboxItem]:
        """Up to `limit` samples in `order`, leaving out `exclude`; they stay until removed."""
        ...

    async def remove(self, sample_id: str) -> bool:
        """Delete a sample (its verdict came, or the cloud refused it for good); False when not there."""
        ...
