"""The SQLite schema of the cloud's store, versioned with PRAGMA user_version.

Version 1 kept only the idempotency record (sample_id, edge, times, serialized verdict). Version 2
adds, for the admin API and the dashboard, the sample's metadata and the verdict's fields as columns
of the same row, a label index, thumbnails, the policy history and edge snapshots. Version 3 adds the
claim of a sample being judged (`claimed_by`, `claim_until`): replicas sharing one database judge a
sample once (`cloud.store.verdicts.VerdictStore.claim`). Version 4 keys every sample by its edge and
its id, `(edge_id, sample_id)`: a sample_id is the edge's own name for its sample, so two edges may
use the same one, and each gets its own verdict; the label index and thumbnails are keyed the same.
It also adds the API tokens an admin issues (`admin_tokens`).
`migrate` brings a file of any version to 4; it works from the columns and keys actually present, so
running it twice, or on a file another process touched, is safe.
"""

from __future__ import annotations

import sqlite3

from cloud.store.columns import verdict_columns

SCHEMA_VERSION = 4

# One row per sample ever received, by (edge_id, sample_id): the idempotency record of the cloud.
# `verdict` is the serialized Verdict, NULL while the sample is received but not judged yet.
VERDICTS_TABLE = """
CREATE TABLE IF NOT EXISTS verdicts (
    sample_id   TEXT NOT NULL,
    edge_id     TEXT NOT NULL,
    received_at REAL NOT NULL,
    decided_at  REAL,
    verdict     BLOB,
    PRIMARY KEY (edge_id, sample_id)
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
    # The claims a replica holds on samples it is judging, which it renews (VerdictStore.renew_claims).
    "CREATE INDEX IF NOT EXISTS verdicts_claims ON verdicts (claimed_by) WHERE verdict IS NULL",
    # Covering indexes of the two series: they are read without touching the rows (and their blobs).
    "CREATE INDEX IF NOT EXISTS verdicts_uplink ON verdicts (received_at, edge_id, uplink_bytes)",
    "CREATE INDEX IF NOT EXISTS verdicts_decisions ON verdicts (decided_at, edge_id, decision)",
    # Labels the cloud saw or the edge reported, for the label filter.
    """CREATE TABLE IF NOT EXISTS verdict_labels (
        label     TEXT NOT NULL,
        edge_id   TEXT NOT NULL,
        sample_id TEXT NOT NULL,
        PRIMARY KEY (label, edge_id, sample_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS verdict_labels_by_sample ON verdict_labels (edge_id, sample_id)",
    """CREATE TABLE IF NOT EXISTS thumbnails (
        edge_id   TEXT NOT NULL,
        sample_id TEXT NOT NULL,
        jpeg      BLOB NOT NULL,
        PRIMARY KEY (edge_id, sample_id)
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
# Version 4: API tokens an admin issued (cloud/api/auth.py), beside the users the config names; only
# the token's SHA-256 is kept. Shared by every replica on one database.
ADMIN_TOKENS_TABLE = """CREATE TABLE IF NOT EXISTS admin_tokens (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    digest     BLOB NOT NULL,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL
)"""
BACKFILL_CHUNK = 1000
# Before version 4 these tables were keyed by sample_id alone; `rekey` copies them into version 4's.
REKEYED = ("verdicts", "verdict_labels", "thumbnails")
_V3_INDEXES = ("verdicts_decided_at", "verdicts_edge_decided_at", "verdicts_uplink", "verdicts_decisions")


def migrate(conn: sqlite3.Connection) -> int:
    """Create or bring the schema to SCHEMA_VERSION in one transaction; returns the rows backfilled."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        old = [table for table in REKEYED if _keyed_by_sample_id_alone(conn, table)]
        for table in old:  # version 3 or earlier: set aside, copied into the new tables below
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v3")
        for index in (*_V3_INDEXES, "verdict_labels_sample") if old else ():
            conn.execute(f"DROP INDEX IF EXISTS {index}")
        conn.execute(VERDICTS_TABLE)
        conn.execute(VERDICTS_BY_DECIDED_AT)
        present = {row[1] for row in conn.execute("PRAGMA table_info(verdicts)")}
        for name, kind in VERDICT_COLUMNS:
            if name not in present:
                conn.execute(f"ALTER TABLE verdicts ADD COLUMN {name} {kind}")
        for statement in V2_STATEMENTS:
            conn.execute(statement)
        conn.execute(ADMIN_TOKENS_TABLE)
        if old:
            _copy_rekeyed(conn, old)
        backfilled = _backfill(conn)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return backfilled


def _keyed_by_sample_id_alone(conn: sqlite3.Connection, table: str) -> bool:
    """Whether `table` exists with the primary key of version 3 and earlier (no edge_id in it)."""
    key = {row[1] for row in conn.execute(f"PRAGMA table_info({table})") if row[5] > 0}
    return bool(key) and "edge_id" not in key


def _copy_rekeyed(conn: sqlite3.Connection, old: list[str]) -> None:
    """Copy the set-aside tables of version 3 or earlier into version 4's, then drop them."""
    if "verdicts" in old:
        present = [row[1] for row in conn.execute("PRAGMA table_info(verdicts_v3)")]
        names = ", ".join(present)
        conn.execute(f"INSERT INTO verdicts ({names}) SELECT {names} FROM verdicts_v3")
    # Labels and thumbnails take their edge from the verdict row (a row without one had no sample);
    # the old verdicts table is still keyed by sample_id, so each is one lookup.
    verdicts = "verdicts_v3" if "verdicts" in old else "verdicts"
    if "verdict_labels" in old:
        conn.execute(
            "INSERT OR IGNORE INTO verdict_labels (label, edge_id, sample_id) SELECT l.label, v.edge_id, l.sample_id"
            f" FROM verdict_labels_v3 l JOIN {verdicts} v ON v.sample_id = l.sample_id"
        )
    if "thumbnails" in old:
        conn.execute(
            "INSERT OR IGNORE INTO thumbnails (edge_id, sample_id, jpeg) SELECT v.edge_id, t.sample_id, t.jpeg"
            f" FROM thumbnails_v3 t JOIN {verdicts} v ON v.sample_id = t.sample_id"
        )
    for table in old:
        conn.execute(f"DROP TABLE {table}_v3")


def _backfill(conn: sqlite3.Connection) -> int:
    """Fill the verdict columns of rows judged under version 1 from their serialized verdicts."""
    done = 0
    while True:
        rows = conn.execute(
            "SELECT edge_id, sample_id, verdict FROM verdicts WHERE verdict IS NOT NULL AND decision IS NULL LIMIT ?",
            (BACKFILL_CHUNK,),
        ).fetchall()
        if not rows:
            return done
        for edge_id, sample_id, blob in rows:
            columns = verdict_columns(bytes(blob))
            conn.execute(
                "UPDATE verdicts SET decision = :decision, labels = :labels, confidence = :confidence, text = :text,"
                " backend = :backend, model = :model, origin = :origin, origin_detail = :origin_detail"
                " WHERE edge_id = :edge_id AND sample_id = :sample_id",
                {**columns.as_params(), "edge_id": edge_id, "sample_id": sample_id},
            )
            conn.executemany(
                "INSERT OR IGNORE INTO verdict_labels (label, edge_id, sample_id) VALUES (?, ?, ?)",
                [(label, edge_id, sample_id) for label in columns.labels],
            )
        done += len(rows)
