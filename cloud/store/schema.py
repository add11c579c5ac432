"""The SQLite schema of the cloud's store, versioned with PRAGMA user_version.

Version 1 kept only the idempotency record (sample_id, edge, times, serialized verdict). Version 2
adds, for the admin API and the dashboard, the sample's metadata and the verdict's fields as columns
of the same row, a label index, thumbnails, the policy history and edge snapshots. Version 3 adds the
claim of a sample being judged (`claimed_by`, `claim_until`): replicas sharing one database judge a
sample once (`cloud.store.verdicts.VerdictStore.claim`). `migrate` brings a file of any version to
3; it works from the columns actually present, so running it twice, or on a file another process
touched, is safe.
"""

from __future__ import annotations

import sqlite3

from cloud.store.columns import verdict_columns

SCHEMA_VERSION = 3

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

# Version 2: the columns added to `verdicts` (NULL on rows of version 1 that carry no such data).
V2_VERDICT_COLUMNS = (
    ("camera_id", "TEXT"),
    ("frame_seq", "INTEGER"),
    ("captured_at", "REAL"),
    ("mined_reason", "TEXT"),
    ("edge_detections", "TEXT"),  # JSON [{"label", "score"}]
    ("decision", "TEXT"),  # confirmed | rejected | unsure
    ("labels", "TEXT"),  # JSON list of the cloud's labels
    ("confidence", "REAL"),
    ("text", "TEXT"),
    ("backend", "TEXT"),
    ("model", "TEXT"),
    ("policy_version", "INTEGER"),
    ("origin", "TEXT"),
    ("origin_detail", "TEXT"),
    ("uplink_bytes", "INTEGER"),
)
# Version 3: which replica judges a received sample, until when (unix seconds); NULL on other rows.
V3_VERDICT_COLUMNS = (
    ("claimed_by", "TEXT"),
    ("claim_until", "REAL"),
)
VERDICT_COLUMNS = V2_VERDICT_COLUMNS + V3_VERDICT_COLUMNS
V2_STATEMENTS = (
    "CREATE INDEX IF NOT EXISTS verdicts_edge_decided_at ON verdicts (edge_id, decided_at)",
    # Covering indexes of the two series: they are read without touching the rows (and their blobs).
    "CREATE INDEX IF NOT EXISTS verdicts_uplink ON verdicts (received_at, edge_id, uplink_bytes)",
    "CREATE INDEX IF NOT EXISTS verdicts_decisions ON verdicts (decided_at, edge_id, decision)",
    # Labels the cloud saw or the edge reported, for the label filter.
    """CREATE TABLE IF NOT EXISTS verdict_labels (
        label     TEXT NOT NULL,
        sample_id TEXT NOT NULL,
        PRIMARY KEY (label, sample_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS verdict_labels_sample ON verdict_labels (sample_id)",
    """CREATE TABLE IF NOT EXISTS thumbnails (
        sample_id TEXT PRIMARY KEY,
        jpeg      BLOB NOT NULL
    ) WITHOUT ROWID""",
    # Every policy version published: the layer it changed and its written settings (JSON, NULL for
    # a removed override).
    """CREATE TABLE IF NOT EXISTS policy_history (
        version    INTEGER PRIMARY KEY,
        scope      TEXT NOT NULL,
        scope_id   TEXT NOT NULL,
        settings   TEXT,
        created_at REAL NOT NULL,
        reason     TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS edge_snapshots (
        edge_id  TEXT NOT NULL,
        taken_at REAL NOT NULL,
        record   TEXT NOT NULL,
        PRIMARY KEY (edge_id, taken_at)
    ) WITHOUT ROWID""",
)
BACKFILL_CHUNK = 1000


def migrate(conn: sqlite3.Connection) -> int:
    """Create or bring the schema to SCHEMA_VERSION in one transaction; returns the rows backfilled."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(VERDICTS_TABLE)
        conn.execute(VERDICTS_BY_DECIDED_AT)
        present = {row[1] for row in conn.execute("PRAGMA table_info(verdicts)")}
        for name, kind in VERDICT_COLUMNS:
            if name not in present:
                conn.execute(f"ALTER TABLE verdicts ADD COLUMN {name} {kind}")
        for statement in V2_STATEMENTS:
            conn.execute(statement)
        backfilled = _backfill(conn)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return backfilled


def _backfill(conn: sqlite3.Connection) -> int:
    """Fill the verdict columns of rows judged under version 1 from their serialized verdicts."""
    done = 0
    while True:
        rows = conn.execute(
            "SELECT sample_id, verdict FROM verdicts WHERE verdict IS NOT NULL AND decision IS NULL LIMIT ?",
            (BACKFILL_CHUNK,),
        ).fetchall()
        if not rows:
            return done
        for sample_id, blob in rows:
            columns = verdict_columns(bytes(blob))
            conn.execute(
                "UPDATE verdicts SET decision = :decision, labels = :labels, confidence = :confidence, text = :text,"
                " backend = :backend, model = :model, origin = :origin, origin_detail = :origin_detail"
                " WHERE sample_id = :sample_id",
                {**columns.as_params(), "sample_id": sample_id},
            )
            conn.executemany(
                "INSERT OR IGNORE INTO verdict_labels (label, sample_id) VALUES (?, ?)",
                [(label, sample_id) for label in columns.labels],
            )
        done += len(rows)
