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
