"""The outbox's SQLite file, as blocking calls for the one thread that owns it (no asyncio here).

Durability: WAL with synchronous=FULL. A commit in WAL mode writes the transaction to the -wal file
before it returns, so with either NORMAL or FULL a sample whose put returned survives kill -9 of the
agent (the OS holds the written pages). FULL adds an fsync of the WAL at every commit, so the sample
also survives a power cut or a kernel panic, which is how gateways in the field usually die. The
outbox's promise is "lose nothing the miner handed over", and the write rate is that of suspicious
samples only (a few per second per edge), so one fsync per put is a price worth paying; NORMAL
would lose the last puts before a power cut without telling anyone.

Byte and row totals are kept in memory, counted once at open and moved by every committed write,
so that the byte bound costs nothing per put (a SUM over blobs would read the whole file). This
relies on the file having one writer, the agent's outbox, which is what it is for.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from google.protobuf.message import DecodeError

from edge.outbox.schema import SCHEMA_VERSION, STATEMENTS
from protos import sample_pb2

logger = logging.getLogger(__name__)

ReplayOrder = Literal["priority", "newest_first", "oldest_first"]
"""Order of `next_batch`: most uncertain first (then newest), or by capture time either way."""

BUSY_TIMEOUT_S = 5.0
# Directions match the indexes in schema.py, so no ORDER BY needs a temporary sort.
_SEND_ORDER: dict[str, str] = {
    "priority": "priority DESC, created_at DESC, sample_id DESC",
    "newest_first": "created_at DESC, sample_id DESC",
    "oldest_first": "created_at ASC, sample_id ASC",
}
_EVICTION_ORDER = "priority ASC, created_at ASC, sample_id ASC"
_INSERT = """
INSERT INTO outbox (sample_id, priority, created_at, size, data) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (sample_id) DO NOTHING
"""
# SQLite's result codes for a file that is not (or no longer) a database.
_DAMAGED_FILE = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


class OutboxError(RuntimeError):
    """The outbox's database cannot be opened or written; the message names the file and the operation."""


@dataclass(frozen=True)
class OutboxStats:
    """What the outbox holds."""

    samples: int
    bytes: int
    oldest_age_s: float  # age of the oldest sample by capture time; 0.0 when empty


@dataclass(frozen=True)
class PutResult:
    """Whether a put stored a new row, and which rows it evicted to stay within the byte bound."""

    stored: bool
    evicted: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One stored sample as it goes on the wire: its stored bytes, sent as they are."""

    sample_id: str
    priority: float
    payload: bytes  # a serialized Sample, checked to parse and to name sample_id

    def sample(self) -> sample_pb2.Sample:
        """The sample itself (parses the payload)."""
        return sample_pb2.Sample.FromString(self.payload)


@dataclass(frozen=True)
class BatchResult:
    """Samples to send, and ids of rows that did not parse (already deleted)."""

    samples: list[OutboxItem]
    corrupt: list[str]


class OutboxDatabase:
    """The outbox table in one SQLite file; every method must run on the same thread."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None
        self._samples = 0
        self._bytes = 0

    def connect(self) -> sqlite3.Connection:
        """Open the file (once); a damaged file is moved aside and a new one started, never a crash."""
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot create the outbox's folder: {exc.strerror or exc}") from exc
        try:
            conn = self._open_counted()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "") not in _DAMAGED_FILE:
                raise OutboxError(f"{self.path}: cannot open the outbox: {exc}") from exc
            self._quarantine(exc)
            try:
                conn = self._open_counted()
            except sqlite3.Error as again:
                raise OutboxError(f"{self.path}: cannot start a new outbox: {again}") from again
        self._conn = conn
        return conn

    def put(self, sample_id: str, priority: float, created_at: float, data: bytes) -> PutResult:
        """Store a sample unless its id is there already, then evict until within the byte bound."""
        conn = self.connect()
        with self._transaction(conn):
            if conn.execute(_INSERT, (sample_id, priority, created_at, len(data), data)).rowcount != 1:
                return PutResult(stored=False)
            self._samples += 1
            self._bytes += len(data)
            evicted = self._evict(conn) if self._bytes > self.max_bytes else []
        return PutResult(stored=True, evicted=evicted)

    def next_batch(self, limit: int, order: ReplayOrder, exclude: Set[str]) -> BatchResult:
        """Up to `limit` samples in `order`, skipping `exclude`; rows that do not parse are deleted."""
        conn = self.connect()
        samples: list[OutboxItem] = []
        corrupt: list[str] = []
        # Ids come from the covering index; a blob is read only for a row that will be sent.
        ids = conn.execute(f"SELECT sample_id FROM outbox ORDER BY {_SEND_ORDER[order]}")
        try:
            for (sample_id,) in ids:
                if len(samples) >= limit:
                    break
                if sample_id in exclude:
                    continue
                sample = self._load(conn, sample_id)
                if sample is None:
                    corrupt.append(sample_id)
                else:
                    samples.append(sample)
        finally:
            ids.close()
        if corrupt:
            self._delete(conn, corrupt)
        return BatchResult(samples, corrupt)

    def remove(self, sample_id: str) -> bool:
        """Delete one sample; False when it is not there (removed before, evicted or expired)."""
        return bool(self._delete(self.connect(), [sample_id]))

    def expire(self, captured_before: float) -> list[str]:
        """Delete every sample captured before `captured_before` (unix seconds); returns their ids."""
        conn = self.connect()
        with self._transaction(conn):
            rows = conn.execute(
                "DELETE FROM outbox WHERE created_at < ? RETURNING sample_id, size", (captured_before,)
            ).fetchall()
            self._forget(rows)
        return [str(sample_id) for sample_id, _ in rows]

    def stats(self, now: float) -> OutboxStats:
        """Row count, bytes and the age of the oldest sample at `now` (unix seconds)."""
        oldest = self.connect().execute("SELECT MIN(created_at) FROM outbox").fetchone()[0]
        age = 0.0 if oldest is None else max(0.0, now - float(oldest))
        return OutboxStats(samples=self._samples, bytes=self._bytes, oldest_age_s=age)

    def close(self) -> None:
        """Close the file; the next call would open it again."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open_counted(self) -> sqlite3.Connection:
        conn = _open(self.path)
        try:
            samples, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        except sqlite3.Error:
            conn.close()
            raise
        self._samples, self._bytes = int(samples), int(total)
        return conn

    def _quarantine(self, exc: sqlite3.DatabaseError) -> None:
        """Move a damaged file (and its -wal/-shm) aside for a person to look at, keeping the agent up."""
        suffix = f".corrupt-{int(time.time())}"
        for part in (self.path, *(self.path.with_name(self.path.name + end) for end in ("-wal", "-shm"))):
            if part.exists():
                part.rename(part.with_name(part.name + suffix))
        logger.error(
            "%s: outbox file is damaged (%s); moved aside as %s%s and started an empty outbox",
            self.path,
            exc,
            self.path.name,
            suffix,
        )

    def _evict(self, conn: sqlite3.Connection) -> list[str]:
        """Delete lowest priority, then oldest, until within max_bytes (may include the row just put)."""
        victims: list[tuple[str, int]] = []
        excess = self._bytes - self.max_bytes
        rows = conn.execute(f"SELECT sample_id, size FROM outbox ORDER BY {_EVICTION_ORDER}")
        try:
            for sample_id, size in rows:
                if excess <= 0:
                    break
                victims.append((str(sample_id), int(size)))
                excess -= int(size)
        finally:
            rows.close()
        conn.executemany("DELETE FROM outbox WHERE sample_id = ?", [(sample_id,) for sample_id, _ in victims])
        self._forget(victims)
        return [sample_id for sample_id, _ in victims]

    def _load(self, conn: sqlite3.Connection, sample_id: str) -> OutboxItem | None:
        (data,) = conn.execute("SELECT data FROM outbox WHERE sample_id = ?", (sample_id,)).fetchone()
        try:
            payload = bytes(data)
            # Parsed only to trust the row; the stored bytes are what is sent.
            sample = sample_pb2.Sample.FromString(payload)
        except (DecodeError, TypeError) as exc:
            logger.error("%s: outbox row %s does not parse as a Sample (%s); deleted", self.path, sample_id, exc)
            return None
        # Garbage can parse as a valid message; a row is only trusted when it names itself.
        if sample.sample_id != sample_id:
            logger.error("%s: outbox row %s holds sample %r; deleted", self.path, sample_id, sample.sample_id)
            return None
        return OutboxItem(sample_id, sample.priority, payload)

    def _delete(self, conn: sqlite3.Connection, sample_ids: list[str]) -> int:
        with self._transaction(conn):
            rows = [
                row
                for sample_id in sample_ids
                for row in conn.execute(
                    "DELETE FROM outbox WHERE sample_id = ? RETURNING sample_id, size", (sample_id,)
                ).fetchall()
            ]
            self._forget(rows)
        return len(rows)

    def _forget(self, rows: Iterable[tuple[Any, Any]]) -> None:
        """Move the totals for rows just deleted: (sample_id, size) pairs."""
        for _, size in rows:
            self._samples -= 1
            self._bytes -= int(size)

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; on failure roll back and recount the totals from the file."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite rolls back by itself on some errors (disk full, I/O)
                conn.execute("ROLLBACK")
            samples, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
            self._samples, self._bytes = int(samples), int(total)
            raise


def _open(path: Path) -> sqlite3.Connection:
    """Open the file in WAL mode with synchronous=FULL and create or check the schema."""
    # Autocommit (isolation_level=None): transactions are the explicit BEGIN/COMMIT of the caller.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(
                f"{path}: SQLite refused WAL mode (journal_mode is {mode}); is it on a network filesystem?"
            )
        conn.execute("PRAGMA synchronous=FULL")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"{path}: outbox schema version {version} is newer than this agent's {SCHEMA_VERSION}; "
                "run a newer agent or point the outbox at another file"
            )
        for statement in STATEMENTS:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn
