"""What the cloud's SQLite stores share: one connection in WAL mode, used from one dedicated thread.

(`cloud.store.pg` is the same for PostgreSQL: a connection pool, used from a few threads.)

`VerdictStore` and the closed loop's `PairStore` keep their tables in the same file, each through
its own connection on its own thread, so that blocking SQLite work never runs on the event loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from cloud.store.db import Conn, Database, SqliteConn
from common.sqlite import SqliteThread

BUSY_TIMEOUT_S = 5.0
T = TypeVar("T")


class StoreError(RuntimeError):
    """The store's database cannot be opened or written; the message names the file."""


def open_wal(path: Path) -> sqlite3.Connection:
    """An autocommit connection to `path` (its folder created) in WAL mode with synchronous=NORMAL."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the store's folder: {exc.strerror or exc}") from exc
    # Autocommit (isolation_level=None): statements outside an explicit BEGIN are durable on return.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"{path}: SQLite refused WAL mode (journal_mode is {mode}); is it on a network filesystem?"
            )
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path}: cannot open the database: {exc}") from exc
    except StoreError:
        conn.close()
        raise
    return conn


def open_with_tables(path: Path, statements: Sequence[str], what: str) -> sqlite3.Connection:
    """`open_wal`, then the CREATE ... IF NOT EXISTS `statements` of a store's tables; errors name `what`."""
    conn = open_wal(path)
    try:
        for statement in statements:
            conn.execute(statement)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path}: cannot open the {what}: {exc}") from exc
    return conn


class SqliteWorker:
    """A `Database` on one SQLite file: one connection, opened lazily by `connect` on the worker thread;
    every statement runs there, in submission order."""

    def __init__(self, path: Path, what: str, connect: Callable[[Path], sqlite3.Connection]) -> None:
        """`what` names the store in errors ("verdict store"); `connect` opens and prepares the connection."""
        self._thread = SqliteThread(path, what, StoreError)
        self._connect = connect
        self._conn: SqliteConn | None = None
        self.where = str(path)
        self.shared = False

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._thread.closed

    async def run(self, operation: str, statement: Callable[[Conn], T]) -> T:
        """Run `statement` on the worker thread; SQLite errors become StoreError naming the file and operation."""
        return await self._thread.run(operation, self._call, statement)

    async def close(self) -> None:
        """Close the connection on its thread and stop the thread (again is a no-op)."""
        await self._thread.close(self._disconnect)

    def _call(self, statement: Callable[[Conn], T]) -> T:
        if self._conn is None:
            self._conn = SqliteConn(self._connect(self._thread.path))
        return statement(self._conn)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def sqlite_unless(
    database: Database | None, path: Path | str | None, what: str, connect: Callable[[Path], sqlite3.Connection]
) -> Database:
    """`database` if given, else a SqliteWorker on `path` (which must then be given)."""
    if database is not None:
        return database
    if path is None:
        raise ValueError(f"the {what} needs a SQLite path or a database")
    return SqliteWorker(Path(path), what, connect)
