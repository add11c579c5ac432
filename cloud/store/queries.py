"""The store's read queries and the cursor of verdict pages (blocking: run on a store thread).

Written once for SQLite and PostgreSQL (`cloud.store.db`).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cloud.store.base import MAX_PAGE_BYTES
from cloud.store.db import Conn
from cloud.store.records import (
    DecisionPoint,
    EdgeDetectionSummary,
    EdgeSnapshot,
    PolicyRecord,
    UplinkPoint,
    VerdictFilter,
    VerdictPage,
    VerdictRecord,
)

_RECORD_COLUMNS = (
    "v.sample_id, v.edge_id, v.camera_id, v.frame_seq, v.captured_at, v.received_at, v.decided_at, v.mined_reason,"
    " v.edge_detections, v.decision, v.labels, v.confidence, v.text, v.backend, v.model, v.policy_version,"
    " v.origin, v.origin_detail, v.uplink_bytes, t.sample_id IS NOT NULL"
)
_FROM = "FROM verdicts v LEFT JOIN thumbnails t ON t.edge_id = v.edge_id AND t.sample_id = v.sample_id"


class CursorError(ValueError):
    """A page cursor this store did not hand out (or from another filter's paging that no longer parses)."""


def encode_cursor(decided_at: float, edge_id: str, sample_id: str) -> str:
    """An opaque cursor after the row (decided_at, edge_id, sample_id) in newest-first order."""
    raw = json.dumps([decided_at, edge_id, sample_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str, str]:
    """The row a cursor points after; CursorError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decided_at, edge_id, sample_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as err:
        raise CursorError(f"cursor {cursor!r} is not a cursor this API returned") from err
    if not isinstance(decided_at, int | float) or not isinstance(edge_id, str) or not isinstance(sample_id, str):
        raise CursorError(f"cursor {cursor!r} is not a cursor this API returned")
    return float(decided_at), edge_id, sample_id


def list_verdicts(
    conn: Conn, where: VerdictFilter, limit: int, cursor: str | None, max_bytes: int = MAX_PAGE_BYTES
) -> VerdictPage:
    """One page of judged samples, newest decided first (ties by edge and sample_id), stable under new arrivals.

    The page ends early, with a cursor after its last item, where one more item would take its JSON
    past `max_bytes`; it always holds at least one item.
    """
    clauses = ["v.verdict IS NOT NULL"]
    params: list[Any] = []
    for column, value in (("edge_id", where.edge_id), ("camera_id", where.camera_id), ("decision", where.decision)):
        if value is not None:
            clauses.append(f"v.{column} = ?")
            params.append(value)
    if where.label is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM verdict_labels l WHERE l.label = ? AND l.edge_id = v.edge_id"
            " AND l.sample_id = v.sample_id)"
        )
        params.append(where.label)
    if where.since is not None:
        clauses.append("v.decided_at >= ?")
        params.append(where.since)
    if where.until is not None:
        clauses.append("v.decided_at < ?")
        params.append(where.until)
    if cursor is not None:
        decided_at, edge_id, sample_id = decode_cursor(cursor)
        clauses.append("(v.decided_at < ? OR (v.decided_at = ? AND (v.edge_id, v.sample_id) < (?, ?)))")
        params += [decided_at, decided_at, edge_id, sample_id]
    sql = (
        f"SELECT {_RECORD_COLUMNS} {_FROM} WHERE {' AND '.join(clauses)}"
        " ORDER BY v.decided_at DESC, v.edge_id DESC, v.sample_id DESC LIMIT ?"
    )
    rows = conn.execute(sql, (*params, limit + 1)).fetchall()
    items: list[VerdictRecord] = []
    size = 0
    for row in rows[:limit]:
        record = _record(row)
        size += record.json_size() + 1  # and its comma
        if items and size > max_bytes:
            break
        items.append(record)
    last = items[-1] if len(rows) > len(items) else None
    next_cursor = encode_cursor(last.decided_at or 0.0, last.edge_id, last.sample_id) if last is not None else None
    return VerdictPage(items, next_cursor)


def get_record(conn: Conn, sample_id: str, edge_id: str) -> VerdictRecord | None:
    """One judged sample's record."""
    row = conn.execute(
        f"SELECT {_RECORD_COLUMNS} {_FROM} WHERE v.edge_id = ? AND v.sample_id = ? AND v.verdict IS NOT NULL",
        (edge_id, sample_id),
    ).fetchone()
    return None if row is None else _record(row)


def _record(row: tuple[Any, ...]) -> VerdictRecord:
    detections = json.loads(row[8]) if row[8] else []
    return VerdictRecord(
        sample_id=row[0],
        edge_id=row[1],
        camera_id=row[2] or "",
        frame_seq=row[3],
        captured_at=row[4],
        received_at=row[5],
        decided_at=row[6],
        mined_reason=row[7] or "",
        edge_detections=tuple(EdgeDetectionSummary(str(d["label"]), float(d["score"])) for d in detections),
        decision=row[9] or "unsure",
        labels=tuple(json.loads(row[10])) if row[10] else (),
        confidence=row[11],
        text=row[12] or "",
        backend=row[13] or "",
        model=row[14] or "",
        policy_version=row[15],
        origin=row[16] or "",
        origin_detail=row[17] or "",
        uplink_bytes=row[18],
        has_thumbnail=bool(row[19]),
    )


def _range(column: str, since: float | None, until: float | None) -> tuple[str, list[float]]:
    clauses, params = [], []
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(until)
    return (" AND ".join(clauses) or "TRUE"), params


def uplink_series(conn: Conn, bucket_s: float, since: float | None, until: float | None) -> list[UplinkPoint]:
    """Samples (each once) and their bytes per edge and bucket of arrival time."""
    where, params = _range("received_at", since, until)
    rows = conn.execute(
        f"SELECT edge_id, {conn.bucket('received_at')} AS bucket, COUNT(*), COALESCE(SUM(uplink_bytes), 0)"
        f" FROM verdicts WHERE {where} GROUP BY edge_id, bucket ORDER BY edge_id, bucket",
        (bucket_s, *params),
    ).fetchall()
    return [UplinkPoint(edge, bucket * bucket_s, int(count), int(size)) for edge, bucket, count, size in rows]


def decision_series(conn: Conn, bucket_s: float, since: float | None, until: float | None) -> list[DecisionPoint]:
    """Confirmed, rejected and unsure verdicts per edge and bucket of decision time."""
    where, params = _range("decided_at", since, until)
    rows = conn.execute(
        f"SELECT edge_id, {conn.bucket('decided_at')} AS bucket,"
        " SUM(CASE WHEN decision = 'confirmed' THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN decision = 'rejected' THEN 1 ELSE 0 END), SUM(CASE WHEN decision = 'unsure' THEN 1 ELSE 0 END)"
        # decision is set exactly on judged rows (put and the schema-2 backfill), and is in the covering index.
        f" FROM verdicts WHERE decision IS NOT NULL AND {where} GROUP BY edge_id, bucket ORDER BY edge_id, bucket",
        (bucket_s, *params),
    ).fetchall()
    return [DecisionPoint(edge, bucket * bucket_s, int(c), int(r), int(u)) for edge, bucket, c, r, u in rows]


def list_policies(conn: Conn, limit: int, before_version: int | None) -> list[PolicyRecord]:
    """Published policy versions, newest first."""
    sql = "SELECT version, scope, scope_id, settings, created_at, reason FROM policy_history"
    params: list[Any] = []
    if before_version is not None:
        sql += " WHERE version < ?"
        params.append(before_version)
    rows = conn.execute(sql + " ORDER BY version DESC LIMIT ?", (*params, limit)).fetchall()
    return [_policy(row) for row in rows]


def get_policy(conn: Conn, version: int) -> PolicyRecord | None:
    """One published version."""
    row = conn.execute(
        "SELECT version, scope, scope_id, settings, created_at, reason FROM policy_history WHERE version = ?",
        (version,),
    ).fetchone()
    return None if row is None else _policy(row)


def _policy(row: tuple[Any, ...]) -> PolicyRecord:
    return PolicyRecord(
        version=int(row[0]),
        scope=row[1],
        scope_id=row[2],
        settings=None if row[3] is None else json.loads(row[3]),
        created_at=float(row[4]),
        reason=row[5],
    )


def latest_edge_snapshots(conn: Conn) -> list[EdgeSnapshot]:
    """The newest snapshot of every edge."""
    rows = conn.execute(
        "SELECT s.edge_id, s.taken_at, s.record FROM edge_snapshots s JOIN"
        " (SELECT edge_id, MAX(taken_at) AS newest FROM edge_snapshots GROUP BY edge_id) n"
        " ON s.edge_id = n.edge_id AND s.taken_at = n.newest ORDER BY s.edge_id"
    ).fetchall()
    return [EdgeSnapshot(edge, float(taken_at), json.loads(record)) for edge, taken_at, record in rows]
