"""PairStore: the closed loop's window of (edge score, cloud decision) pairs, its rules' outcomes, its band moves.

On SQLite the tables live in the verdict store's file (WAL mode, so this second connection never
blocks the verdict store's readers) and are created here with CREATE TABLE IF NOT EXISTS: they do
not touch the verdict store's schema version; every statement runs in one dedicated thread that owns
the connection. On PostgreSQL they are part of the store's schema (`cloud.store.pg`) and the pool
is shared with the verdict store. Rows are bounded per (edge_id, label): `max_pairs_per_key` pairs
and `max_moves_per_key` band moves, the oldest go first. Nothing runs on the event loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cloud.store.db import Conn, Database
from cloud.store.sqlite import open_with_tables, sqlite_unless

T = TypeVar("T")

SCORE_PAIRS_TABLE = """
CREATE TABLE IF NOT EXISTS score_pairs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    edge_id     TEXT NOT NULL,
    label       TEXT NOT NULL,
    edge_score  REAL NOT NULL,
    confirmed   INTEGER NOT NULL,
    weight      REAL NOT NULL,
    audit       INTEGER NOT NULL,
    observed_at REAL NOT NULL
)
"""
SCORE_PAIRS_BY_KEY = "CREATE INDEX IF NOT EXISTS score_pairs_key ON score_pairs (edge_id, label, id)"
SCORE_PAIRS_BY_TIME = "CREATE INDEX IF NOT EXISTS score_pairs_observed_at ON score_pairs (observed_at)"
BAND_MOVES_TABLE = """
CREATE TABLE IF NOT EXISTS band_moves (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    edge_id  TEXT NOT NULL,
    label    TEXT NOT NULL,
    moved_at REAL NOT NULL,
    low      REAL NOT NULL,
    high     REAL NOT NULL,
    version  INTEGER NOT NULL,
    reason   TEXT NOT NULL
)
"""
BAND_MOVES_BY_KEY = "CREATE INDEX IF NOT EXISTS band_moves_key ON band_moves (edge_id, label, id)"
# The outcomes the per-camera rules learn from (cloud.policy.evidence): value is the motion share of a
# motion sample (0 for the others), outcome whether it counts against the rule's value.
RULE_OUTCOMES_TABLE = """
CREATE TABLE IF NOT EXISTS rule_outcomes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    edge_id     TEXT NOT NULL,
    camera_id   TEXT NOT NULL,
    rule        TEXT NOT NULL,
    value       REAL NOT NULL,
    outcome     INTEGER NOT NULL,
    observed_at REAL NOT NULL
)
"""
RULE_OUTCOMES_BY_KEY = "CREATE INDEX IF NOT EXISTS rule_outcomes_key ON rule_outcomes (edge_id, camera_id, rule, id)"
RULE_OUTCOMES_BY_TIME = "CREATE INDEX IF NOT EXISTS rule_outcomes_observed_at ON rule_outcomes (observed_at)"
STATEMENTS = (
    SCORE_PAIRS_TABLE,
    SCORE_PAIRS_BY_KEY,
    SCORE_PAIRS_BY_TIME,
    BAND_MOVES_TABLE,
    BAND_MOVES_BY_KEY,
    RULE_OUTCOMES_TABLE,
    RULE_OUTCOMES_BY_KEY,
    RULE_OUTCOMES_BY_TIME,
)

# Keep only the newest `limit` rows of one key: everything at or below the id of the (limit+1)-th newest.
_TRIM = """
DELETE FROM {table} WHERE edge_id = ? AND label = ? AND id <= COALESCE(
    (SELECT id FROM {table} WHERE edge_id = ? AND label = ? ORDER BY id DESC LIMIT 1 OFFSET ?), -1)
"""
_LOAD_PAIRS = """
SELECT edge_id, label, edge_score, confirmed, weight, audit, observed_at FROM score_pairs
WHERE observed_at >= ? ORDER BY id
"""
_LOAD_PAIRS_AFTER = """
SELECT id, edge_id, label, edge_score, confirmed, weight, audit, observed_at FROM score_pairs
WHERE id > ? AND observed_at >= ? ORDER BY id
"""
_LOAD_MOVES = "SELECT edge_id, label, moved_at, low, high, version, reason FROM band_moves ORDER BY id"
_LOAD_RULES_AFTER = """
SELECT id, edge_id, camera_id, rule, value, outcome, observed_at FROM rule_outcomes
WHERE id > ? AND observed_at >= ? ORDER BY id
"""
_TRIM_RULES = """
DELETE FROM rule_outcomes WHERE edge_id = ? AND camera_id = ? AND rule = ? AND id <= COALESCE(
    (SELECT id FROM rule_outcomes WHERE edge_id = ? AND camera_id = ? AND rule = ? ORDER BY id DESC LIMIT 1 OFFSET ?),
    -1)
"""


@dataclass(frozen=True, slots=True)
class PairRow:
    """One object an edge reported and the cloud judged, for one (edge_id, label) window."""

    edge_id: str
    label: str
    score: float
    confirmed: bool
    weight: float
    audit: bool
    observed_at: float


@dataclass(frozen=True, slots=True)
class RuleRow:
    """One outcome a per-camera rule learns from (cloud.policy.evidence)."""

    edge_id: str
    camera_id: str
    rule: str
    value: float
    outcome: bool
    observed_at: float


@dataclass(frozen=True, slots=True)
class BandMoveRow:
    """One band the closed loop published for an edge's class, with the policy version and why."""

    edge_id: str
    label: str
    moved_at: float
    low: float
    high: float
    version: int
    reason: str


class PairStore:
    """Score pairs and band moves in a SQLite file; all methods are coroutines safe to call from the loop."""

    def __init__(
        self,
        path: Path | str | None,
        max_pairs_per_key: int,
        max_moves_per_key: int = 100,
        *,
        database: Database | None = None,
    ) -> None:
        """Use the SQLite file at `path` (normally the verdict store's), or `database`; bounded per (edge_id, label)."""
        self._max_pairs = max_pairs_per_key
        self._max_moves = max_moves_per_key
        self._db = sqlite_unless(database, path, "pair store", _connect)
        self._pulled_id = 0  # the last pair row `pull_new` returned
        self._pulled_rule_id = 0  # the last rule outcome `pull_new_rules` returned

    @property
    def where(self) -> str:
        """The SQLite file, or the PostgreSQL server and database."""
        return self._db.where

    async def open(self) -> None:
        """Open the database and create the tables now, so a bad path fails at start-up."""
        await self._run("open", lambda conn: None)

    async def add_pairs(self, rows: Sequence[PairRow]) -> None:
        """Append pairs in one transaction, then trim each key they touched to its newest rows."""
        if rows:
            await self._run("add_pairs", lambda conn: self._add_pairs(conn, rows))

    async def load_pairs(self, since: float) -> list[PairRow]:
        """Every pair observed at or after `since` (unix seconds), oldest first."""
        found = await self._run("load_pairs", lambda conn: conn.execute(_LOAD_PAIRS, (since,)).fetchall())
        return [_pair(row) for row in found]

    async def pull_new(self, since: float) -> list[PairRow]:
        """Pairs written since the last pull (by any replica on this database) and observed at or after
        `since`, oldest first; the first pull returns every such pair."""
        after = self._pulled_id
        found = await self._run("pull_new", lambda conn: conn.execute(_LOAD_PAIRS_AFTER, (after, since)).fetchall())
        if found:
            self._pulled_id = max(self._pulled_id, int(found[-1][0]))
        return [_pair(row[1:]) for row in found]

    async def add_rule_outcomes(self, rows: Sequence[RuleRow]) -> None:
        """Append rule outcomes in one transaction, keeping the newest `max_pairs_per_key` of each rule."""
        if rows:
            await self._run("add_rule_outcomes", lambda conn: self._add_rule_outcomes(conn, rows))

    async def pull_new_rules(self, since: float) -> list[RuleRow]:
        """Rule outcomes written since the last pull (by any replica on this database) and observed at or
        after `since`, oldest first; the first pull returns every such outcome."""
        after = self._pulled_rule_id
        found = await self._run(
            "pull_new_rules", lambda conn: conn.execute(_LOAD_RULES_AFTER, (after, since)).fetchall()
        )
        if found:
            self._pulled_rule_id = max(self._pulled_rule_id, int(found[-1][0]))
        return [RuleRow(str(e), str(c), str(r), float(v), bool(o), float(t)) for _, e, c, r, v, o, t in found]

    async def prune_pairs(self, observed_before: float) -> int:
        """Forget pairs and rule outcomes observed before `observed_before` (unix seconds); how many pairs went."""

        def prune(conn: Conn) -> int:
            conn.execute("DELETE FROM rule_outcomes WHERE observed_at < ?", (observed_before,))
            return int(conn.execute("DELETE FROM score_pairs WHERE observed_at < ?", (observed_before,)).rowcount)

        return await self._run("prune_pairs", prune)

    async def add_move(self, move: BandMoveRow) -> None:
        """Record a band move, keeping the newest `max_moves_per_key` of its key."""
        await self._run("add_move", lambda conn: self._add_move(conn, move))

    async def load_moves(self) -> list[BandMoveRow]:
        """Every band move kept, oldest first."""
        found = await self._run("load_moves", lambda conn: conn.execute(_LOAD_MOVES).fetchall())
        return [
            BandMoveRow(str(e), str(lab), float(t), float(lo), float(hi), int(v), str(r))
            for e, lab, t, lo, hi, v, r in found
        ]

    async def count_pairs(self) -> int:
        """Number of pairs stored."""
        row = await self._run("count_pairs", lambda conn: conn.execute("SELECT COUNT(*) FROM score_pairs").fetchone())
        return int(row[0])

    async def close(self) -> None:
        """Finish queued statements, close the database and its thread; again is a no-op."""
        await self._db.close()

    def _add_pairs(self, conn: Conn, rows: Sequence[PairRow]) -> None:
        with conn.transaction():  # a batch is stored whole or not at all
            conn.executemany(
                "INSERT INTO score_pairs (edge_id, label, edge_score, confirmed, weight, audit, observed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.edge_id, r.label, r.score, int(r.confirmed), r.weight, int(r.audit), r.observed_at) for r in rows],
            )
            for edge_id, label in sorted({(r.edge_id, r.label) for r in rows}):
                trim = _TRIM.format(table="score_pairs")
                conn.execute(trim, (edge_id, label, edge_id, label, self._max_pairs))

    def _add_rule_outcomes(self, conn: Conn, rows: Sequence[RuleRow]) -> None:
        with conn.transaction():
            conn.executemany(
                "INSERT INTO rule_outcomes (edge_id, camera_id, rule, value, outcome, observed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(r.edge_id, r.camera_id, r.rule, r.value, int(r.outcome), r.observed_at) for r in rows],
            )
            for edge_id, camera_id, rule in sorted({(r.edge_id, r.camera_id, r.rule) for r in rows}):
                conn.execute(_TRIM_RULES, (edge_id, camera_id, rule, edge_id, camera_id, rule, self._max_pairs))

    def _add_move(self, conn: Conn, move: BandMoveRow) -> None:
        with conn.transaction():
            conn.execute(
                "INSERT INTO band_moves (edge_id, label, moved_at, low, high, version, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (move.edge_id, move.label, move.moved_at, move.low, move.high, move.version, move.reason),
            )
            trim = _TRIM.format(table="band_moves")
            conn.execute(trim, (move.edge_id, move.label, move.edge_id, move.label, self._max_moves))

    async def _run(self, operation: str, statement: Callable[[Conn], T]) -> T:
        return await self._db.run(operation, statement)


def _pair(row: Sequence[Any]) -> PairRow:
    """A pair from its columns (edge_id, label, edge_score, confirmed, weight, audit, observed_at)."""
    edge_id, label, score, confirmed, weight, audit, at = row
    return PairRow(str(edge_id), str(label), float(score), bool(confirmed), float(weight), bool(audit), float(at))


def _connect(path: Path) -> sqlite3.Connection:
    """Open the database in WAL mode and create the closed loop's tables."""
    return open_with_tables(path, STATEMENTS, "closed loop's pair store")
