"""One SQL, two engines: the connection the store's statements run on, for SQLite and PostgreSQL.

The store's statements (`verdicts.py`, `queries.py`, `pairs.py`) are written once, in the SQL both
engines speak (`INSERT ... ON CONFLICT`, `CASE`, `TRUE`, joins instead of SQLite's bare columns),
with `?` and `:name` parameters, and run on a `Conn`:

- `SqliteConn` wraps a `sqlite3.Connection` (autocommit; `transaction` is BEGIN IMMEDIATE).
- `PgConn` wraps a psycopg 3 connection (autocommit; `transaction` is psycopg's), rewriting each
  statement's parameters to psycopg's `%s` / `%(name)s` once (cached).

What differs in the SQL itself is asked of the connection: `bucket(column)` (whole time buckets:
SQLite's CAST truncates, PostgreSQL's rounds, so it floors there). Table definitions differ more
(types, auto-increment, the schema version) and live per engine (`schema.py`, `pg.py`).
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")
Params = Sequence[Any] | Mapping[str, Any]
Dialect = Literal["sqlite", "postgres"]


class Cursor(Protocol):
    """What the store reads of an executed statement."""

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""
        ...

    def fetchone(self) -> Any:
        """The next row, or None."""
        ...

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        ...


class Conn(Protocol):
    """A connection the store's statements run on (blocking: on a store thread, never on the loop)."""

    dialect: Dialect

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """Run one statement with `?` or `:name` parameters."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters."""
        ...

    def transaction(self) -> Any:
        """A context manager: the statements inside commit together, or roll back on an exception."""
        ...

    def bucket(self, column: str, width_param: str = "?") -> str:
        """SQL of the whole number of `width`-second buckets in `column` (floored; values are >= 0)."""
        ...


class SqliteConn:
    """A `Conn` over an autocommit sqlite3 connection."""

    dialect: Dialect = "sqlite"

    def __init__(self, raw: sqlite3.Connection) -> None:
        """Wrap `raw` (opened with isolation_level=None)."""
        self.raw = raw

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """Run one statement."""
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement per row."""
        self.raw.executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE (the write lock at once) ... COMMIT, or ROLLBACK on an exception."""
        self.raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.raw.execute("ROLLBACK")
            raise
        self.raw.execute("COMMIT")

    def bucket(self, column: str, width_param: str = "?") -> str:
        """CAST truncates toward zero: the floor of a non-negative quotient."""
        return f"CAST({column} / {width_param} AS INTEGER)"

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=512)
def to_psycopg(sql: str) -> str:
    """`sql` with psycopg's parameters: `?` -> `%s`, `:name` -> `%(name)s` (a literal % doubled).

    The store's statements hold no `?` or `:word` inside string literals; `::type` casts are left alone.
    """
    escaped = sql.replace("%", "%%")
    return _NAMED.sub(r"%(\1)s", escaped.replace("?", "%s"))


class PgConn:
    """A `Conn` over an autocommit psycopg 3 connection."""

    dialect: Dialect = "postgres"

    def __init__(self, raw: Any) -> None:
        """Wrap `raw` (a psycopg.Connection with autocommit=True)."""
        self.raw = raw

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """Run one statement."""
        cursor: Cursor = self.raw.execute(to_psycopg(sql), params or None)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement per row (psycopg pipelines them)."""
        batch = list(rows)
        if batch:
            with self.raw.cursor() as cursor:
                cursor.executemany(to_psycopg(sql), batch)

    def transaction(self) -> Any:
        """psycopg's transaction block."""
        return self.raw.transaction()

    def bucket(self, column: str, width_param: str = "?") -> str:
        """FLOOR, since PostgreSQL's CAST to an integer rounds."""
        return f"CAST(FLOOR({column} / {width_param}) AS BIGINT)"


class Database(Protocol):
    """Where a store's statements run: one SQLite file (`sqlite.SqliteWorker`) or a PostgreSQL pool (`pg.PgPool`)."""

    where: str  # the file, or the server and database (never the password), for errors and logs
    shared: bool  # whether other processes (replicas) judge into the same database

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        ...

    async def run(self, operation: str, statement: Callable[[Conn], T]) -> T:
        """Run `statement` off the event loop; engine errors become StoreError naming `where` and `operation`."""
        ...

    async def close(self) -> None:
        """Finish, and release the connections; again is a no-op."""
        ...
