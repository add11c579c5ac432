"""Which replica runs the closed loop: a PostgreSQL advisory lock held on a connection of its own.

Replicas on one store all observe their verdicts and write the pairs; only the one holding the
lease evaluates and publishes (`BandController(leader=...)`). The lock is a session lock: it goes
with the holder's connection, so when that replica dies (even SIGKILLed) the server releases it, and
another replica, trying every `retry_s`, takes over. A holder checks its connection as often; losing
it means losing the lease at once.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)
# pg_try_advisory_lock key of the closed loop: "edgeloop" as an integer.
LOOP_LOCK = 0x6564_6765_6C6F_6F70


class AdvisoryLease:
    """Holds (or keeps trying for) one advisory lock in a thread; `held` says whether this process has it."""

    def __init__(self, dsn: str, where: str, key: int = LOOP_LOCK, retry_s: float = 1.0) -> None:
        """Nothing connects before `start`; `where` names the server in logs (never the password)."""
        self._dsn = dsn
        self._where = where
        self._key = key
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._held = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lease now."""
        return self._held.is_set()

    def start(self) -> None:
        """Start trying for the lease (in a thread of its own)."""
        self._thread = threading.Thread(target=self._run, name="loop-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as conn:
                    while not self._stop.is_set():
                        if not self._held.is_set():
                            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
                            if row is not None and row[0]:
                                self._held.set()
                                logger.info("closed loop: this replica leads (lease on %s)", self._where)
                        else:
                            conn.execute("SELECT 1")  # still connected, so still holding it
                        self._stop.wait(self._retry_s)
            except Exception as err:
                if self._held.is_set():
                    logger.warning("closed loop: lease lost (%s); another replica may lead", err)
                self._held.clear()
                self._stop.wait(self._retry_s)
        self._held.clear()

    def close(self) -> None:
        """Give the lease up (its connection closes) and stop trying."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
