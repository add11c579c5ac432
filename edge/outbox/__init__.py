"""The outbox: suspicious samples on disk (SQLite, WAL) until the cloud acknowledges them."""

from __future__ import annotations

from edge.outbox.database import OutboxError, OutboxStats, ReplayOrder
from edge.outbox.store import DROP_CORRUPT, DROP_EVICTED, DROP_EXPIRED, Outbox

__all__ = ["DROP_CORRUPT", "DROP_EVICTED", "DROP_EXPIRED", "Outbox", "OutboxError", "OutboxStats", "ReplayOrder"]
