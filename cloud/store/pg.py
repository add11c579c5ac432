"""The store on PostgreSQL: a psycopg 3 connection pool, its schema, and its migrations.

`PgPool` is a `cloud.store.db.Database`: the store's statements (the same ones SQLite runs) run on
connections of a `psycopg_pool.ConnectionPool`, each call on one of a few worker threads, so the
event loop never waits on the server. Why threads and not psycopg's async API: the statements are
plain blocking functions of a `Conn` shared with SQLite, which keeps one copy of every query; a
thread per pooled connection costs nothing that matters next to a network round trip.

The schema is the SQLite one (`cloud.store.schema`, `cloud.store.pairs`) in PostgreSQL's types:
`BYTEA` for blobs, `DOUBLE PRECISION`, `BIGINT`, identity columns, and ids in the "C" collation so
that pages order exactly as on SQLite. Its version is kept in `edgeglm_schema`; `migrate` runs at
open under a transaction-scoped advisory lock, so replicas starting together migrate once.
PostgreSQL starts at schema version 2 (version 1 only ever existed as SQLite files); version 3's
columns are added to a version-2 database, and a database before version 4 is re-keyed in place by
(edge_id, sample_id) (`_rekey`). Text cannot
hold NUL characters in PostgreSQL; a NUL in a string parameter (a model's description, say) is
stored as U+FFFD rather than failing the write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cloud.store.db import Conn, Params, PgConn
from cloud.store.field import FIELD_STATEMENTS
from cloud.store.pairs import (
    BAND_MOVES_BY_KEY,
    BAND_MOVES_TABLE,
    RULE_OUTCOMES_BY_KEY,
    RULE_OUTCOMES_BY_TIME,
    RULE_OUTCOMES_TABLE,
    SCORE_PAIRS_BY_KEY,
    SCORE_PAIRS_BY_TIME,
    SCORE_PAIRS_TABLE,
)
from cloud.store.schema import (
    ADMIN_TOKENS_TABLE,
    SCHEMA_VERSION,
    V2_STATEMENTS,
    VERDICT_COLUMNS,
    VERDICTS_BY_DECIDED_AT,
)
from cloud.store.sqlite import StoreError

logger = logging.getLogger(__name__)
T = TypeVar("T")
OPEN_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10
# pg_advisory_xact_lock key of the migration: "edgeglm" as an integer.
MIGRATION_LOCK = 0x6564_6765_676C_6D
_TYPES = {"TEXT": "TEXT", "INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION"}

_VERDICTS = (
    "CREATE TABLE IF NOT EXISTS verdicts (\n"
    '    sample_id   TEXT COLLATE "C" NOT NULL,\n'
    '    edge_id     TEXT COLLATE "C" NOT NULL,\n'
    "    received_at DOUBLE PRECISION NOT NULL,\n"
    "    decided_at  DOUBLE PRECISION,\n"
    "    verdict     BYTEA,\n"
    + "".join(f"    {name} {_TYPES[kind]},\n" for name, kind in VERDICT_COLUMNS)
    + "    PRIMARY KEY (edge_id, sample_id)\n)"
)


def _pg(statement: str) -> str:
    """A table definition of the SQLite schema in PostgreSQL's terms."""
    return (
        statement.replace(") WITHOUT ROWID", ")")
        .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
        .replace("BLOB", "BYTEA")
        .replace("REAL", "DOUBLE PRECISION")
        .replace("version    INTEGER", "version    BIGINT")
        .replace("version  INTEGER", "version  BIGINT")
        .replace("label     TEXT", 'label     TEXT COLLATE "C"')
        .replace("sample_id TEXT", 'sample_id TEXT COLLATE "C"')
        .replace("edge_id  TEXT", 'edge_id  TEXT COLLATE "C"')
        .replace("edge_id   TEXT", 'edge_id   TEXT COLLATE "C"')
    )


SCHEMA = (
    _VERDICTS,
    VERDICTS_BY_DECIDED_AT,
    *(_pg(statement) for statement in V2_STATEMENTS),
    _pg(ADMIN_TOKENS_TABLE).replace("name       TEXT", 'name       TEXT COLLATE "C"'),
    _pg(SCORE_PAIRS_TABLE),
    SCORE_PAIRS_BY_KEY,
    SCORE_PAIRS_BY_TIME,
    _pg(BAND_MOVES_TABLE),
    BAND_MOVES_BY_KEY,
    _pg(RULE_OUTCOMES_TABLE),
    RULE_OUTCOMES_BY_KEY,
    RULE_OUTCOMES_BY_TIME,
    *(_pg(statement) for statement in FIELD_STATEMENTS),
)


def migrate(conn: Conn) -> int | None:
    """Create or check the schema in one transaction; the version found before (None: a new database).

    Raises StoreError for a database of a newer schema than this service's.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS edgeglm_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM edgeglm_schema").fetchone()
        found = None if row is None else int(row[0])
        if found is not None and found > SCHEMA_VERSION:
            raise StoreError(
                f"schema version {found} is newer than this cloud service's {SCHEMA_VERSION}; run a newer cloud "
                "service or point the store at another database"
            )
        if found is not None and found < 4:
            _rekey(conn)
        conn.execute(_VERDICTS)
        for name, kind in VERDICT_COLUMNS:  # what a database of an earlier version lacks (before its indexes)
            conn.execute(f"ALTER TABLE verdicts ADD COLUMN IF NOT EXISTS {name} {_TYPES[kind]}")
        for statement in SCHEMA:
            conn.execute(statement)
        if found is None:
            conn.execute("INSERT INTO edgeglm_schema (version) VALUES (?)", (SCHEMA_VERSION,))
        elif found < SCHEMA_VERSION:
            conn.execute("UPDATE edgeglm_schema SET version = ?", (SCHEMA_VERSION,))
    return found


def _rekey(conn: Conn) -> None:
    """Key a database of version 2 or 3 by (edge_id, sample_id) in place (see `cloud.store.schema`)."""
    for table in ("verdict_labels", "thumbnails"):  # their edge from the verdict row, while it is keyed by sample_id
        conn.execute(f'ALTER TABLE {table} ADD COLUMN IF NOT EXISTS edge_id TEXT COLLATE "C"')
        conn.execute(f"UPDATE {table} t SET edge_id = v.edge_id FROM verdicts v WHERE v.sample_id = t.sample_id")
        conn.execute(f"DELETE FROM {table} WHERE edge_id IS NULL")
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN edge_id SET NOT NULL")
    conn.execute("DROP INDEX IF EXISTS verdict_labels_sample")
    for table, key in (
        ("verdicts", "edge_id, sample_id"),
        ("verdict_labels", "label, edge_id, sample_id"),
        ("thumbnails", "edge_id, sample_id"),
    ):
        row = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = ?::regclass AND contype = 'p'", (table,)
        ).fetchone()
        if row is not None:
            conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{row[0]}"')
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({key})")


def _no_nul(value: Any) -> Any:
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


class _SafeConn(PgConn):
    """PgConn whose string parameters hold no NUL (PostgreSQL's text cannot)."""

    def execute(self, sql: str, params: Params = ()) -> Any:
        """Run one statement."""
        return super().execute(sql, _clean(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement per row."""
        super().executemany(sql, [tuple(_no_nul(v) for v in row) for row in rows])


def _clean(params: Params) -> Params:
    if isinstance(params, Mapping):
        return {key: _no_nul(value) for key, value in params.items()}
    return tuple(_no_nul(value) for value in params)


def read_dsn(dsn_file: Path) -> str:
    """The connection string in `dsn_file` (a Secret's file), surrounding whitespace stripped."""
    try:
        dsn = dsn_file.read_text().strip()
    except OSError as err:
        raise StoreError(f"store.dsn_file {dsn_file} cannot be read ({err.strerror or err})") from err
    if not dsn:
        raise StoreError(
            f"store.dsn_file {dsn_file} is empty; write e.g. postgresql://edgeglm:PASSWORD@db:5432/edgeglm"
        )
    return dsn


def describe(dsn: str) -> str:
    """Where a DSN points, without its password: 'postgresql://user@host:port/dbname'."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError; its message may quote the password, so it is not shown
        return "postgresql (unparsable DSN)"
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{parts.get('dbname') or ''}"


class PgPool:
    """A `Database` on PostgreSQL: a pool of `max_size` connections, used from as many threads."""

    def __init__(self, dsn: str, what: str, min_size: int = 1, max_size: int = 4) -> None:
        """Nothing connects before the first `run` (or `open`); `what` names the store in errors."""
        from psycopg_pool import ConnectionPool

        self.where = describe(dsn)
        self.shared = True
        self._dsn = dsn
        self._what = what
        self._pool = ConnectionPool(
            dsn, min_size=min_size, max_size=max_size, kwargs={"autocommit": True}, open=False, name=what
        )
        self._executor = ThreadPoolExecutor(max_workers=max_size, thread_name_prefix=what.replace(" ", "-"))
        self._opened = False
        self._lock = asyncio.Lock()
        self._closed = False
        self.schema_found: int | None = None

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    async def run(self, operation: str, statement: Callable[[Conn], T]) -> T:
        """Run `statement` on a pooled connection in a worker thread; errors name the server and operation."""
        import psycopg
        import psycopg_pool

        if self._closed:
            raise StoreError(f"{self.where}: {operation} on a closed {self._what}")
        if not self._opened:
            await self._open()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, statement)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(f"{self.where}: {self._what} {operation} failed: {exc}") from exc

    async def _open(self) -> None:
        import psycopg
        import psycopg_pool

        async with self._lock:
            if self._opened:
                return
            loop = asyncio.get_running_loop()
            try:
                # One plain connection first: a refused or unauthenticated one fails now with the server's
                # reason (the pool would retry until its timeout), and it runs the migration.
                self.schema_found = await loop.run_in_executor(self._executor, self._migrate)
                await loop.run_in_executor(self._executor, lambda: self._pool.open(wait=True, timeout=OPEN_TIMEOUT_S))
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                raise StoreError(f"{self.where}: cannot open the {self._what}: {exc}") from exc
            except StoreError as exc:
                raise StoreError(f"{self.where}: {exc}") from exc
            self._opened = True
            if self.schema_found is not None and self.schema_found < SCHEMA_VERSION:
                logger.info("%s: schema migrated from version %d to %d", self.where, self.schema_found, SCHEMA_VERSION)

    def _migrate(self) -> int | None:
        import psycopg

        with psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as raw:
            return migrate(_SafeConn(raw))

    def _call(self, statement: Callable[[Conn], T]) -> T:
        with self._pool.connection() as raw:
            return statement(_SafeConn(raw))

    async def close(self) -> None:
        """Close the pool's connections and stop the threads; again is a no-op."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._pool.close)
        finally:
            self._executor.shutdown(wait=False)


def postgres_database(dsn_file: Path, what: str, pool_size: int) -> PgPool:
    """A pool on the server the DSN in `dsn_file` names (nothing connects yet)."""
    return PgPool(read_dsn(dsn_file), what, min_size=1, max_size=pool_size)
