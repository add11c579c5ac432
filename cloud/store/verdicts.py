"""VerdictStore: every sample the cloud received, and its verdict once judged, in SQLite (WAL) or PostgreSQL.

Besides the idempotency record it keeps, for the admin API and the dashboard, each judged sample's
metadata and thumbnail, the history of published policies and snapshots of the edges (schema
version 2, see `cloud.store.schema`; a file of an earlier version is migrated when opened). It
implements `cloud.store.base.VerdictRepository`.

The cloud deduplicates on (edge_id, sample_id): an edge that did not hear an ack sends the sample
again, and gets the stored verdict instead of a second judgement. A sample_id is an edge's own name
for its sample: another edge using the same one has another sample, judged on its own, and never sees
the first edge's verdict. The statements are written once for both
engines (`cloud.store.db`) and never run on the event loop. On SQLite (the embedded default) every
statement runs in one dedicated thread that owns the connection, in submission order; the file is in
WAL mode with synchronous=NORMAL: readers never block the writer, and a power cut may lose the last
verdicts but never corrupts the file (the edge resends, and the cloud judges those samples again).
On PostgreSQL (`cloud.store.pg`) they run on a connection pool from a few threads; a commit is
durable as the server's settings make it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from cloud.store import queries
from cloud.store.base import MAX_PAGE
from cloud.store.columns import all_labels, meta_params, verdict_columns
from cloud.store.db import Conn, Database
from cloud.store.records import (
    DecisionPoint,
    EdgeSnapshot,
    PolicyRecord,
    SampleMeta,
    TokenRecord,
    UplinkPoint,
    VerdictFilter,
    VerdictPage,
    VerdictRecord,
)
from cloud.store.schema import SCHEMA_VERSION, migrate
from cloud.store.sqlite import StoreError, open_wal, sqlite_unless

logger = logging.getLogger(__name__)
T = TypeVar("T")
# An upsert that fills the verdict of a row recorded on arrival, but never replaces a verdict.
_PUT_VERDICT = """
INSERT INTO verdicts (sample_id, edge_id, received_at, decided_at, verdict) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (edge_id, sample_id) DO UPDATE SET decided_at = excluded.decided_at, verdict = excluded.verdict
WHERE verdicts.verdict IS NULL OR verdicts.origin IN ('timeout', 'backend_error')
"""
# A replica takes a received sample to judge: a new row, or an unjudged one nobody else holds a live
# claim on (a claim ends at claim_until, so a replica that died frees its samples). One statement, so
# of replicas racing for a sample exactly one changes the row.
_CLAIM = """
INSERT INTO verdicts (sample_id, edge_id, received_at, claimed_by, claim_until) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (edge_id, sample_id) DO UPDATE SET claimed_by = excluded.claimed_by, claim_until = excluded.claim_until
WHERE (verdicts.verdict IS NULL OR verdicts.origin IN ('timeout', 'backend_error'))
    AND (verdicts.claimed_by IS NULL OR verdicts.claimed_by = excluded.claimed_by OR verdicts.claim_until < ?)
"""
_CLAIMED = "SELECT verdict, origin, claimed_by, claim_until FROM verdicts WHERE edge_id = ? AND sample_id = ?"
_PUT_LABEL = "INSERT INTO verdict_labels (label, edge_id, sample_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
_PUT_THUMBNAIL = (
    "INSERT INTO thumbnails (edge_id, sample_id, jpeg) VALUES (?, ?, ?)"
    " ON CONFLICT (edge_id, sample_id) DO UPDATE SET jpeg = excluded.jpeg"
)
_SAMPLE = "edge_id = ? AND sample_id = ?"
_PUT_COLUMNS = """
UPDATE verdicts SET decision = :decision, labels = :labels, confidence = :confidence, text = :text,
    backend = :backend, model = :model, origin = :origin, origin_detail = :origin_detail
WHERE edge_id = :edge_id AND sample_id = :sample_id
"""
_PUT_META = """
UPDATE verdicts SET camera_id = :camera_id, frame_seq = :frame_seq, captured_at = :captured_at,
    mined_reason = :mined_reason, edge_detections = :edge_detections, policy_version = :policy_version,
    uplink_bytes = :uplink_bytes
WHERE edge_id = :edge_id AND sample_id = :sample_id
"""


class VerdictStore:
    """Verdicts by (edge_id, sample_id) in SQLite or PostgreSQL; every method is a coroutine safe on the loop."""

    def __init__(self, path: Path | str | None = None, *, database: Database | None = None) -> None:
        """Use the SQLite file at `path` (created with its folder on first use), or `database` (PostgreSQL)."""
        self._db = sqlite_unless(database, path, "verdict store", _connect)

    @property
    def database(self) -> Database:
        """Where the statements run (for checks and tools that read the tables directly)."""
        return self._db

    @property
    def where(self) -> str:
        """The SQLite file, or the PostgreSQL server and database."""
        return self._db.where

    async def open(self) -> None:
        """Open (or create) the database now, so a bad path fails at start-up rather than at the first sample."""
        await self._run("open", lambda conn: None)

    async def get(self, sample_id: str, edge_id: str) -> bytes | None:
        """The serialized Verdict of `edge_id`'s `sample_id`, or None if there is none (unknown, or not judged yet)."""
        row = await self._run(
            "get",
            lambda conn: conn.execute(f"SELECT verdict FROM verdicts WHERE {_SAMPLE}", (edge_id, sample_id)).fetchone(),
        )
        return None if row is None or row[0] is None else bytes(row[0])

    async def contains(self, sample_id: str, edge_id: str) -> bool:
        """Whether `edge_id`'s `sample_id` was received before (judged or not)."""
        row = await self._run(
            "contains",
            lambda conn: conn.execute(f"SELECT 1 FROM verdicts WHERE {_SAMPLE}", (edge_id, sample_id)).fetchone(),
        )
        return row is not None

    async def put(
        self,
        sample_id: str,
        edge_id: str,
        verdict: bytes,
        *,
        received_at: float | None = None,
        decided_at: float | None = None,
        meta: SampleMeta | None = None,
    ) -> bool:
        """Store the verdict of `edge_id`'s `sample_id` (with the sample's `meta`) unless it has one already;
        whether it was.

        Idempotent: a second put for the same sample changes nothing and returns False, except over
        a fallback verdict (timeout, backend error): the sample was never really judged, and a resend
        judged later replaces it. The verdict's fields are read into
        columns here too (before the write, off the loop), in one transaction with the verdict.
        """
        now = time.time()
        row = (
            sample_id,
            edge_id,
            now if received_at is None else received_at,
            now if decided_at is None else decided_at,
        )
        return await self._run("put", lambda conn: _put(conn, row, verdict, meta))

    @property
    def shared(self) -> bool:
        """Whether other processes (replicas) may judge into the same database: PostgreSQL yes, a SQLite file no."""
        return self._db.shared

    async def claim(self, sample_id: str, edge_id: str, replica: str, lease_s: float) -> Claim:
        """Take `edge_id`'s `sample_id` for `replica` to judge for `lease_s` seconds, unless it is judged or
        another holds it.

        A `Claim` says which: `mine` (judge it), `judged` (its stored verdict) or `elsewhere` (another
        replica's live claim; ask again, it lapses at `until`).
        """
        now = time.time()
        row = (sample_id, edge_id, now, replica, now + lease_s)
        return await self._run("claim", lambda conn: _claim(conn, row, now))

    async def renew_claims(self, replica: str, lease_s: float) -> int:
        """Extend every live claim `replica` holds on an unjudged sample to `lease_s` from now; how many.

        One statement for all of them (the partial index `verdicts_claims` finds them); a released or
        lapsed claim is not revived."""
        now = time.time()
        return await self._run(
            "renew_claims",
            lambda conn: (
                conn.execute(
                    "UPDATE verdicts SET claim_until = ? WHERE claimed_by = ? AND verdict IS NULL AND claim_until >= ?",
                    (now + lease_s, replica, now),
                ).rowcount
            ),
        )

    async def release(self, sample_id: str, edge_id: str, replica: str) -> None:
        """Give up `replica`'s claim on an unjudged sample, so a resend is judged at once wherever it lands."""
        await self._run(
            "release",
            lambda conn: conn.execute(
                f"UPDATE verdicts SET claim_until = 0 WHERE {_SAMPLE} AND claimed_by = ? AND verdict IS NULL",
                (edge_id, sample_id, replica),
            ),
        )

    async def count(self) -> int:
        """Number of verdicts stored."""
        return await self._scalar("count", "SELECT COUNT(*) FROM verdicts WHERE verdict IS NOT NULL")

    async def prune(self, decided_before: float) -> int:
        """Forget verdicts (and their thumbnails, labels) and edge snapshots older than `decided_before`.

        Returns how many verdicts went. The policy history is kept: it is small and versions are never reissued.
        """
        return await self._run("prune", lambda conn: _prune(conn, decided_before))

    async def list_verdicts(
        self, where: VerdictFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> VerdictPage:
        """Judged samples matching `where`, newest decided first, `limit` (1..MAX_PAGE) per page after `cursor`.

        Raises `queries.CursorError` (a ValueError) for a cursor this store did not hand out.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit {limit} is outside 1..{MAX_PAGE}")
        if cursor is not None:
            queries.decode_cursor(cursor)  # a bad cursor fails here, not as a StoreError
        return await self._run(
            "list_verdicts", lambda conn: queries.list_verdicts(conn, where or VerdictFilter(), limit, cursor)
        )

    async def get_record(self, sample_id: str, edge_id: str) -> VerdictRecord | None:
        """One judged sample's record, or None (unknown or not judged yet)."""
        return await self._run("get_record", lambda conn: queries.get_record(conn, sample_id, edge_id))

    async def get_thumbnail(self, sample_id: str, edge_id: str) -> bytes | None:
        """The sample's thumbnail JPEG, or None when there is none."""
        row = await self._run(
            "get_thumbnail",
            lambda conn: conn.execute(f"SELECT jpeg FROM thumbnails WHERE {_SAMPLE}", (edge_id, sample_id)).fetchone(),
        )
        return None if row is None else bytes(row[0])

    async def uplink_series(
        self, bucket_s: float, since: float | None = None, until: float | None = None
    ) -> list[UplinkPoint]:
        """Per edge and bucket of arrival time: samples received (each sample once) and their bytes.

        Bytes are the Sample messages' sizes as received; rows written before schema 2, or not judged yet,
        count as samples with 0 bytes.
        """
        return await self._run("uplink_series", lambda conn: queries.uplink_series(conn, bucket_s, since, until))

    async def decision_series(
        self, bucket_s: float, since: float | None = None, until: float | None = None
    ) -> list[DecisionPoint]:
        """Per edge and bucket of decision time: forwarded samples the cloud confirmed, rejected, was unsure of.

        This is the verdict mix of what edges *sent*; it is not the edges' recall (that needs the
        events an edge did not send, which the cloud never sees).
        """
        return await self._run("decision_series", lambda conn: queries.decision_series(conn, bucket_s, since, until))

    async def add_policy(self, record: PolicyRecord) -> bool:
        """Keep a published policy version; False when that version is kept already."""
        settings = None if record.settings is None else json.dumps(record.settings, sort_keys=True)
        params = (record.version, record.scope, record.scope_id, settings, record.created_at, record.reason)
        return await self._run(
            "add_policy",
            lambda conn: (
                conn.execute(
                    "INSERT INTO policy_history (version, scope, scope_id, settings, created_at, reason)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    params,
                ).rowcount
                == 1
            ),
        )

    async def list_policies(self, limit: int = 100, before_version: int | None = None) -> list[PolicyRecord]:
        """Published versions, newest first, `limit` of them below `before_version` if given."""
        return await self._run("list_policies", lambda conn: queries.list_policies(conn, limit, before_version))

    async def get_policy(self, version: int) -> PolicyRecord | None:
        """One published version, or None."""
        return await self._run("get_policy", lambda conn: queries.get_policy(conn, version))

    async def add_token(self, token: TokenRecord) -> bool:
        """Keep an issued API token's record; False when a token of that name is kept already."""
        params = (token.name, token.role, token.digest, token.created_at, token.created_by)
        return await self._run(
            "add_token",
            lambda conn: (
                conn.execute(
                    "INSERT INTO admin_tokens (name, role, digest, created_at, created_by) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    params,
                ).rowcount
                == 1
            ),
        )

    async def list_tokens(self) -> list[TokenRecord]:
        """Every issued API token's record, by name."""
        rows = await self._run(
            "list_tokens",
            lambda conn: conn.execute(
                "SELECT name, role, digest, created_at, created_by FROM admin_tokens ORDER BY name"
            ).fetchall(),
        )
        return [TokenRecord(str(n), str(r), bytes(d), float(at), str(by)) for n, r, d, at, by in rows]

    async def remove_token(self, name: str) -> bool:
        """Forget an issued API token (it stops working); whether there was one of that name."""
        return await self._run(
            "remove_token",
            lambda conn: conn.execute("DELETE FROM admin_tokens WHERE name = ?", (name,)).rowcount == 1,
        )

    async def add_edge_snapshots(self, snapshots: Sequence[EdgeSnapshot]) -> None:
        """Keep edges' records as they are now (one row per edge and time)."""
        rows = [(s.edge_id, s.taken_at, json.dumps(s.record, sort_keys=True)) for s in snapshots]
        await self._run(
            "add_edge_snapshots",
            lambda conn: conn.executemany(
                "INSERT INTO edge_snapshots (edge_id, taken_at, record) VALUES (?, ?, ?)"
                " ON CONFLICT (edge_id, taken_at) DO UPDATE SET record = excluded.record",
                rows,
            ),
        )

    async def latest_edge_snapshots(self) -> list[EdgeSnapshot]:
        """The newest snapshot of every edge ever kept, by edge id."""
        return await self._run("latest_edge_snapshots", queries.latest_edge_snapshots)

    async def close(self) -> None:
        """Finish queued statements, close the database and its thread; again is a no-op."""
        await self._db.close()

    async def _scalar(self, operation: str, sql: str) -> int:
        row = await self._run(operation, lambda conn: conn.execute(sql).fetchone())
        return int(row[0])

    async def _run(self, operation: str, statement: Callable[[Conn], T]) -> T:
        return await self._db.run(operation, statement)


def _connect(path: Path) -> sqlite3.Connection:
    """Open the database in WAL mode and create or check its schema."""
    conn = open_wal(path)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {version} is newer than this cloud service's {SCHEMA_VERSION}; "
                "run a newer cloud service or point the store at another file"
            )
        backfilled = migrate(conn)  # idempotent: also completes a file created with fewer tables
        if 0 < version < SCHEMA_VERSION:
            logger.info(
                "%s: schema migrated from version %d to %d (%d verdicts backfilled)",
                path,
                version,
                SCHEMA_VERSION,
                backfilled,
            )
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path}: cannot open the verdict store: {exc}") from exc
    except StoreError:
        conn.close()
        raise
    return conn


def _put(conn: Conn, row: tuple[str, str, float, float], verdict: bytes, meta: SampleMeta | None) -> bool:
    """The verdict row, its columns, labels, metadata and thumbnail, in one transaction."""
    columns = verdict_columns(verdict)
    sample_id, edge_id = row[0], row[1]
    key = {"edge_id": edge_id, "sample_id": sample_id}
    with conn.transaction():
        stored = conn.execute(_PUT_VERDICT, (*row, verdict)).rowcount == 1
        if stored:
            conn.execute(_PUT_COLUMNS, {**columns.as_params(), **key})
            labels = sorted(all_labels(columns, meta))
            conn.executemany(_PUT_LABEL, [(label, edge_id, sample_id) for label in labels])
            if meta is not None:
                conn.execute(_PUT_META, {**meta_params(meta), **key})
                if meta.thumbnail_jpeg:
                    conn.execute(_PUT_THUMBNAIL, (edge_id, sample_id, meta.thumbnail_jpeg))
    return stored


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of `VerdictStore.claim`."""

    state: Literal["mine", "judged", "elsewhere"]
    verdict: bytes | None = None  # judged: the stored verdict
    holder: str = ""  # elsewhere: the replica judging it
    until: float = 0.0  # elsewhere: when its claim lapses (unix seconds)


def _claim(conn: Conn, row: tuple[str, str, float, str, float], now: float) -> Claim:
    if conn.execute(_CLAIM, (*row, now)).rowcount == 1:
        return Claim("mine")
    found = conn.execute(_CLAIMED, (row[1], row[0])).fetchone()
    if found is None:  # pruned between the two statements: nobody holds it
        return Claim("elsewhere", until=now)
    verdict, origin, holder, until = found
    if verdict is not None and origin not in ("timeout", "backend_error"):
        return Claim("judged", bytes(verdict))
    return Claim("elsewhere", holder=str(holder or ""), until=float(until or now))


def _prune(conn: Conn, before: float) -> int:
    with conn.transaction():
        old = "SELECT 1 FROM verdicts v WHERE v.edge_id = t.edge_id AND v.sample_id = t.sample_id AND v.decided_at < ?"
        conn.execute(f"DELETE FROM thumbnails AS t WHERE EXISTS ({old})", (before,))
        conn.execute(f"DELETE FROM verdict_labels AS t WHERE EXISTS ({old})", (before,))
        gone = conn.execute("DELETE FROM verdicts WHERE decided_at < ?", (before,)).rowcount
        # Received but never judged (a claim whose replica died and whose edge gave up): as old, as gone.
        conn.execute("DELETE FROM verdicts WHERE verdict IS NULL AND received_at < ?", (before,))
        conn.execute("DELETE FROM edge_snapshots WHERE taken_at < ?", (before,))
    return gone
