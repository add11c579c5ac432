"""One dedicated thread per SQLite connection, for asyncio code (the edge's outbox, the cloud's stores).

sqlite3 blocks and a connection belongs to the thread that uses it, so every call on one database
runs on its own single-worker executor, in submission order, and the event loop only awaits it.
SQLite errors come back as the caller's own error type, naming the file and the operation.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class SqliteThread:
    """Runs blocking SQLite calls on one thread; `what` names the database in errors ("outbox")."""

    def __init__(self, path: Path, what: str, error: Callable[[str], Exception]) -> None:
        """Errors are raised as `error(message)`, chained to the sqlite3 error."""
        self.path = path
        self._what = what
        self._error = error
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=what.replace(" ", "-"))
        self.closed = False

    async def run(self, operation: str, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`call(*args, **kwargs)` on the thread; an sqlite3.Error becomes the caller's error type."""
        if self.closed:
            raise self._error(f"{self.path}: {operation} on a closed {self._what}")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(call, *args, **kwargs))
        except sqlite3.Error as exc:
            raise self._error(f"{self.path}: {self._what} {operation} failed: {exc}") from exc

    async def close(self, finish: Callable[[], None]) -> None:
        """Run `finish` (close the connection) after every queued call, then stop the thread; again is a no-op."""
        if self.closed:
            return
        self.closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, finish)
        finally:
            self._executor.shutdown(wait=False)
