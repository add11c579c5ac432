"""The SQLite schema of the cloud's store, versioned with PRAGMA user_version."""

from __future__ import annotations

SCHEMA_VERSION = 1

# One row per sample_id ever received: the idempotency record of the cloud. `verdict` is the
# serialized Verdict, NULL while the sample is received but not judged yet.
VERDICTS_TABLE = """
CREATE TABLE IF NOT EXISTS verdicts (
    sample_id   TEXT PRIMARY KEY,
    edge_id     TEXT NOT NULL,
    received_at REAL NOT NULL,
    decided_at  REAL,
    verdict     BLOB
) WITHOUT ROWID
"""
VERDICTS_BY_DECIDED_AT = "CREATE INDEX IF NOT EXISTS verdicts_decided_at ON verdicts (decided_at)"

# Next, for the policy engine: per (edge_id, label) the recent (edge score, cloud decision) pairs it
# moves the uncertainty bands with. It gets its own table here (e.g. score_pairs(edge_id, label,
# edge_score, decision, decided_at) with an index on (edge_id, label, decided_at) and a bounded
# number of rows per key), its own methods on a store class next to VerdictStore, and
# SCHEMA_VERSION 2.
STATEMENTS = (VERDICTS_TABLE, VERDICTS_BY_DECIDED_AT)
