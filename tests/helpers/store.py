"""Verdict store contents for tests: serialised verdicts, and a file as schema 1 wrote it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from protos import sample_pb2, verdict_pb2

CONFIRMED, REJECTED, UNSURE = verdict_pb2.DECISION_CONFIRMED, verdict_pb2.DECISION_REJECTED, verdict_pb2.DECISION_UNSURE


def verdict(sample_id: str, decision: int = CONFIRMED, labels: tuple[str, ...] = ("person",), text: str = "") -> bytes:
    """A serialised backend verdict on `sample_id` with one detection per label."""
    return verdict_pb2.Verdict(
        sample_id=sample_id,
        decision=decision,  # type: ignore[arg-type]
        detections=[sample_pb2.Detection(label=label, score=0.9) for label in labels],
        text=text or f"verdict on {sample_id}",
        confidence=0.75,
        backend="oracle",
        model_name="truth",
        model_version="v1",
        origin=verdict_pb2.VERDICT_ORIGIN_BACKEND,
    ).SerializeToString()


def write_v1_file(path: Path) -> None:
    """A store as schema 1 wrote it: the verdicts table only, user_version 1."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE verdicts (sample_id TEXT PRIMARY KEY, edge_id TEXT NOT NULL, received_at REAL NOT NULL,"
            " decided_at REAL, verdict BLOB) WITHOUT ROWID"
        )
        conn.execute("CREATE INDEX verdicts_decided_at ON verdicts (decided_at)")
        at = time.time() - 3600  # recent: within any retention
        rows = [
            ("old-1", "gw-1", at + 1, at + 2, verdict("old-1", CONFIRMED, ("person",), "seen before the upgrade")),
            ("old-2", "gw-1", at + 3, at + 4, verdict("old-2", REJECTED, ())),
            ("old-pending", "gw-2", at + 5, None, None),
        ]
        conn.executemany("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute("PRAGMA user_version=1")


# The tables of schema versions 2 and 3 as they were written then (frozen here: the migration must
# bring exactly these to today's). Version 3 only added the claim columns.
_OLD_COLUMNS = (
    "camera_id TEXT, frame_seq INTEGER, captured_at REAL, mined_reason TEXT, edge_detections TEXT, decision TEXT,"
    " labels TEXT, confidence REAL, text TEXT, backend TEXT, model TEXT, policy_version INTEGER, origin TEXT,"
    " origin_detail TEXT, uplink_bytes INTEGER"
)
_OLD_TABLES = (
    "CREATE TABLE verdicts (sample_id TEXT PRIMARY KEY, edge_id TEXT NOT NULL, received_at REAL NOT NULL,"
    " decided_at REAL, verdict BLOB, {columns})",
    "CREATE INDEX verdicts_decided_at ON verdicts (decided_at)",
    "CREATE INDEX verdicts_edge_decided_at ON verdicts (edge_id, decided_at)",
    "CREATE TABLE verdict_labels (label TEXT NOT NULL, sample_id TEXT NOT NULL, PRIMARY KEY (label, sample_id))",
    "CREATE INDEX verdict_labels_sample ON verdict_labels (sample_id)",
    "CREATE TABLE thumbnails (sample_id TEXT PRIMARY KEY, jpeg BLOB NOT NULL)",
)
OLD_THUMBNAIL = b"\xff\xd8 a thumbnail kept before the upgrade \xff\xd9"


def old_store_statements(version: int, engine: str) -> list[tuple[str, tuple[object, ...]]]:
    """The statements that make a store of schema `version` (2 or 3) on `engine` ("sqlite" or "postgres"),
    holding old-1 (gw-1, confirmed "person", with a thumbnail), old-2 (gw-1, rejected) and old-pending
    (gw-2, received, not judged; under version 3 a replica holds a live claim on it)."""
    columns = _OLD_COLUMNS + (", claimed_by TEXT, claim_until REAL" if version >= 3 else "")
    statements: list[tuple[str, tuple[object, ...]]] = [(t.format(columns=columns), ()) for t in _OLD_TABLES]
    at = time.time() - 3600
    rows = [
        ("old-1", "gw-1", at + 1, at + 2, verdict("old-1", CONFIRMED, ("person",), "seen before"), "confirmed"),
        ("old-2", "gw-1", at + 3, at + 4, verdict("old-2", REJECTED, ()), "rejected"),
        ("old-pending", "gw-2", at + 5, None, None, None),
    ]
    insert = "INSERT INTO verdicts (sample_id, edge_id, received_at, decided_at, verdict, decision) VALUES ({})"
    statements += [(insert.format(", ".join("?" * len(row))), row) for row in rows]
    if version >= 3:  # a live claim: the replica judging it went on through the upgrade
        claim = "UPDATE verdicts SET claimed_by = 'r-1', claim_until = ? WHERE sample_id = 'old-pending'"
        statements.append((claim, (time.time() + 3600,)))
    statements.append(("INSERT INTO verdict_labels (label, sample_id) VALUES ('person', 'old-1')", ()))
    statements.append(("INSERT INTO thumbnails (sample_id, jpeg) VALUES ('old-1', ?)", (OLD_THUMBNAIL,)))
    if engine == "postgres":
        pg = [
            (sql.replace("BLOB", "BYTEA").replace("REAL", "DOUBLE PRECISION").replace("?", "%s"), params)
            for sql, params in statements
        ]
        pg.append(("CREATE TABLE edgeglm_schema (version INTEGER NOT NULL)", ()))
        pg.append(("INSERT INTO edgeglm_schema (version) VALUES (%s)", (version,)))
        return pg
    return [*statements, (f"PRAGMA user_version={version}", ())]


def write_old_sqlite(path: Path, version: int) -> None:
    """A SQLite store as schema `version` (2 or 3) wrote it."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for sql, params in old_store_statements(version, "sqlite"):
            conn.execute(sql, params)


def write_old_postgres(dsn: str, version: int) -> None:
    """A PostgreSQL store as schema `version` (2 or 3) wrote it, in the (empty) database `dsn` names."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for sql, params in old_store_statements(version, "postgres"):
            conn.execute(sql, params)
