"""The outbox: suspicious samples on disk (SQLite, WAL) until their verdict comes.

`SampleQueue` is what the dispatcher reads it through (`edge.outbox.queue`).
"""

from __future__ import annotations

from edge.outbox.database import OutboxError, OutboxItem, OutboxStats, ReplayOrder
from edge.outbox.queue import SampleQueue
from edge.outbox.store import DROP_CORRUPT, DROP_EVICTED, DROP_EXPIRED, Outbox

__all__ = [
    "DROP_CORRUPT",
    "DROP_EVICTED",
    "DROP_EXPIRED",
    "Outbox",
    "OutboxError",
    "OutboxItem",
    "OutboxStats",
    "ReplayOrder",
    "SampleQueue",
]
