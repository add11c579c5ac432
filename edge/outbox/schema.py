"""The SQLite schema of the edge outbox, versioned with PRAGMA user_version.

One table, one row per sample waiting for the cloud's ack:

    outbox(
        sample_id  TEXT PRIMARY KEY  -- Sample.sample_id, the idempotency key: a second put is a no-op
        priority   REAL NOT NULL     -- Sample.priority: higher goes up first and is evicted last
        created_at REAL NOT NULL     -- capture time (Sample.captured_at), unix seconds: age and replay order
        size       INTEGER NOT NULL  -- len(data): what the byte bound counts
        data       BLOB NOT NULL     -- the serialized Sample, exactly as it goes on the wire
    )

It is a rowid table, not WITHOUT ROWID: rows carry JPEGs of tens of kilobytes, which SQLite stores
best in rowid tables. `data` is the last column so that reading the small ones never touches the
blob's overflow pages. The two indexes cover every ORDER BY the outbox runs (send order, eviction
order, replay order, expiry), each with sample_id in it, so choosing rows never reads a blob.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

OUTBOX_TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    sample_id  TEXT PRIMARY KEY NOT NULL,
    priority   REAL NOT NULL,
    created_at REAL NOT NULL,
    size       INTEGER NOT NULL,
    data       BLOB NOT NULL
)
"""
# Send order (scanned backwards: most uncertain, then newest) and eviction order (forwards).
OUTBOX_BY_PRIORITY = "CREATE INDEX IF NOT EXISTS outbox_by_priority ON outbox (priority, created_at, sample_id)"
# Replay order (either way) and expiry by age.
OUTBOX_BY_CREATED_AT = "CREATE INDEX IF NOT EXISTS outbox_by_created_at ON outbox (created_at, sample_id)"

STATEMENTS = (OUTBOX_TABLE, OUTBOX_BY_PRIORITY, OUTBOX_BY_CREATED_AT)
