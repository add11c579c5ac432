"""The policy engine's state in PostgreSQL, shared by every replica on the same store (store.kind postgres).

One counter row (`policy_counter`) hands out versions: an UPDATE ... RETURNING, so replicas changing
policies at once still get distinct, increasing versions. One row per layer (`policy_layers`) holds
its written settings (JSON; NULL for a removed override), its version and, in `config_digest`, the
digest of the cloud.yaml content it last took (empty for a layer made through the admin API). A
change commits with `NOTIFY edgeglm_policy`; every replica LISTENs on its own connection, reloads
the layers changed since its last look (not every layer) and pushes them to its edges
(`PolicyEngine.follow_from`).

All of it is blocking psycopg on connections of its own: the engine calls it from worker threads.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)
CHANNEL = "edgeglm_policy"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS policy_counter (id INTEGER PRIMARY KEY CHECK (id = 1), last_version BIGINT NOT NULL)",
    "INSERT INTO policy_counter (id, last_version) VALUES (1, 0) ON CONFLICT DO NOTHING",
    """CREATE TABLE IF NOT EXISTS policy_layers (
        key           TEXT COLLATE "C" PRIMARY KEY,
        settings      TEXT,
        version       BIGINT NOT NULL,
        issued_at     DOUBLE PRECISION NOT NULL,
        digest        TEXT NOT NULL,
        config_digest TEXT NOT NULL
    )""",
)


@dataclass(frozen=True, slots=True)
class StoredLayer:
    """One layer as the database holds it."""

    settings: dict[str, Any] | None  # written settings (JSON), None: a removed override
    version: int
    issued_at: float
    digest: str
    config_digest: str


class PgPolicyState:
    """The shared counter and layers on the server `dsn` names."""

    def __init__(self, dsn: str, where: str) -> None:
        """`where` names the server in errors and logs (never the password)."""
        self._dsn = dsn
        self.where = where
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)

    def load(self, since: int = 0) -> tuple[int, dict[str, StoredLayer]]:
        """The last version issued and every layer changed after version `since` (creating the tables on
        first use). Versions commit in the order they are issued (the counter row is locked until its
        transaction commits), so a reader that saw `last` has seen every version up to it: the next
        catch-up asks only for what came after."""
        with self._connect() as conn, conn.transaction():
            for statement in _SCHEMA:
                conn.execute(statement)
            (last,) = conn.execute("SELECT last_version FROM policy_counter WHERE id = 1").fetchone()
            rows = conn.execute(
                "SELECT key, settings, version, issued_at, digest, config_digest FROM policy_layers WHERE version > %s",
                (since,),
            ).fetchall()
        layers = {
            str(key): StoredLayer(None if settings is None else json.loads(settings), int(v), float(t), str(d), str(c))
            for key, settings, v, t, d, c in rows
        }
        return int(last), layers

    def publish(self, key: str, layer: StoredLayer, floor: int) -> int:
        """Take the next version (at least `floor` + 1), store `layer` under it and notify; returns the version."""
        with self._connect() as conn, conn.transaction():
            (version,) = conn.execute(
                "UPDATE policy_counter SET last_version = GREATEST(last_version, %s) + 1 WHERE id = 1"
                " RETURNING last_version",
                (floor,),
            ).fetchone()
            conn.execute(
                "INSERT INTO policy_layers (key, settings, version, issued_at, digest, config_digest)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET settings = excluded.settings,"
                " version = excluded.version, issued_at = excluded.issued_at, digest = excluded.digest,"
                " config_digest = excluded.config_digest",
                (
                    key,
                    None if layer.settings is None else json.dumps(layer.settings, sort_keys=True),
                    version,
                    layer.issued_at,
                    layer.digest,
                    layer.config_digest,
                ),
            )
            conn.execute(f"NOTIFY {CHANNEL}, '{int(version)}'")
        return int(version)

    def listen(self, changed: Callable[[int], None]) -> None:
        """Call `changed(version)` (from a thread of its own) for every change any replica commits."""
        ready = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    with self._connect() as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        ready.set()
                        changed(0)  # (re)connected: catch up on what was missed
                        while not self._stop.is_set():
                            for notify in conn.notifies(timeout=0.5):
                                changed(int(notify.payload or 0))
                except Exception as err:  # the server went away: reconnect after a pause
                    if self._stop.is_set():
                        break
                    logger.warning("%s: policy notifications lost (%s); reconnecting", self.where, err)
                    ready.set()
                    self._stop.wait(1.0)

        self._listener = threading.Thread(target=run, name="policy-listen", daemon=True)
        self._listener.start()
        ready.wait(15)

    def close(self) -> None:
        """Stop listening."""
        self._stop.set()
        if self._listener is not None:
            self._listener.join(5)
