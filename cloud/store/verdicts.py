"""VerdictStore: every sample_id the cloud received, and its verdict once judged, in SQLite (WAL).

The cloud deduplicates on sample_id: an edge that did not hear an ack sends the sample again, and
gets the stored verdict instead of a second judgement. sqlite3 is blocking, so every statement runs
in one dedicated thread that owns the connection (statements run in submission order), never on
the event loop. The database is in WAL mode with synchronous=NORMAL: readers never block the writer,
and a power cut may lose the last verdicts but never corrupts the file (the edge resends, and the
cloud judges those samples again).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from cloud.store.schema import SCHEMA_VERSION, STATEMENTS

T = TypeVar("T")
BUSY_TIMEOUT_S = 5.0
# An upsert that fills the verdict of a row recorded on arrival, but never replaces a verdict.
_PUT_VERDICT = """
INSERT INTO verdicts (sample_id, edge_id, received_at, decided_at, verdict) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (sample_id) DO UPDATE SET decided_at = excluded.decided_at, verdict = excluded.verdict
WHERE verdicts.verdict IS NULL
"""


class StoreError(RuntimeError):
    """The store's database cannot be opened or written; the message names the file."""


class VerdictStore:
    """Verdicts by sample_id in a SQLite file; all methods are coroutines safe to call from the loop."""

    def __init__(self, path: Path | str) -> None:
        """Use the database at `path` (created with its folder on first use)."""
        self._path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verdict-store")
        self._conn: sqlite3.Connection | None = None  # touched only in the store's thread
        self._closed = False

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    async def open(self) -> None:
        """Open (or create) the database now, so a bad path fails at start-up rather than at the first sample."""
        await self._run("open", lambda conn: None)

    async def get(self, sample_id: str) -> bytes | None:
        """The serialized Verdict of `sample_id`, or None if there is none (unknown, or not judged yet)."""
        row = await self._run(
            "get",
            lambda conn: conn.execute("SELECT verdict FROM verdicts WHERE sample_id = ?", (sample_id,)).fetchone(),
        )
        return None if row is None or row[0] is None else bytes(row[0])

    async def contains(self, sample_id: str) -> bool:
        """Whether `sample_id` was received before (judged or not)."""
        row = await self._run(
            "contains", lambda conn: conn.execute("SELECT 1 FROM verdicts WHERE sample_id = ?", (sample_id,)).fetchone()
        )
        return row is not None

    async def record_received(self, sample_id: str, edge_id: str, received_at: float | None = None) -> bool:
        """Note a sample's arrival before it is judged; False if `sample_id` was already known (a duplicate)."""
        at = time.time() if received_at is None else received_at
        return await self._run(
            "record_received",
            lambda conn: (
                conn.execute(
                    "INSERT OR IGNORE INTO verdicts (sample_id, edge_id, received_at) VALUES (?, ?, ?)",
                    (sample_id, edge_id, at),
                ).rowcount
                == 1
            ),
        )

    async def put(
        self,
        sample_id: str,
        edge_id: str,
        verdict: bytes,
        *,
        received_at: float | None = None,
        decided_at: float | None = None,
    ) -> bool:
        """Store the verdict of `sample_id` unless it has one already; returns whether it was stored.

        Idempotent: a second put for the same sample_id changes nothing and returns False. A sample
        recorded with `record_received` gets its verdict here.
        """
        now = time.time()
        row = (
            sample_id,
            edge_id,
            now if received_at is None else received_at,
            now if decided_at is None else decided_at,
        )
        return await self._run(
            "put",
            lambda conn: (
                conn.execute(
                    _PUT_VERDICT,
                    (*row, verdict),
                ).rowcount
                == 1
            ),
        )

    async def count(self) -> int:
        """Number of verdicts stored."""
        return await self._scalar("count", "SELECT COUNT(*) FROM verdicts WHERE verdict IS NOT NULL")

    async def count_pending(self) -> int:
        """Number of samples received and not judged yet."""
        return await self._scalar("count_pending", "SELECT COUNT(*) FROM verdicts WHERE verdict IS NULL")

    async def prune(self, decided_before: float) -> int:
        """Forget verdicts decided before `decided_before` (unix seconds); returns how many went."""
        return await self._run(
            "prune",
            lambda conn: conn.execute("DELETE FROM verdicts WHERE decided_at < ?", (decided_before,)).rowcount,
        )

    async def close(self) -> None:
        """Finish queued statements, close the database and its thread; again is a no-op."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._disconnect)
        finally:
            self._executor.shutdown(wait=False)

    async def _scalar(self, operation: str, sql: str) -> int:
        row = await self._run(operation, lambda conn: conn.execute(sql).fetchone())
        return int(row[0])

    async def _run(self, operation: str, statement: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError(f"{self._path}: {operation} on a closed verdict store")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, operation, statement)

    def _call(self, operation: str, statement: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return statement(self._connection())
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: {operation} failed: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = _connect(self._path)
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _connect(path: Path) -> sqlite3.Connection:
    """Open the database in WAL mode and create or check its schema."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the store's folder: {exc.strerror or exc}") from exc
    # Autocommit (isolation_level=None): every statement is its own transaction, durable on return.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"{path}: SQLite refused WAL mode (journal_mode is {mode}); is it on a network filesystem?"
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {version} is newer than this cloud service's {SCHEMA_VERSION}; "
                "run a newer cloud service or point the store at another file"
            )
        for statement in STATEMENTS:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path}: cannot open the verdict store: {exc}") from exc
    except StoreError:
        conn.close()
        raise
    return conn
