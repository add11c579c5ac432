"""Stores written by earlier schema versions, on both engines, opened by today's cloud: every row, label
and thumbnail is still there, dedup still holds, and samples are keyed per edge from then on.

Schema 1 (SQLite only) is tested in test_store_queries; the tables of versions 2 and 3 are frozen in
tests/helpers/store.py as those versions wrote them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cloud.store import VerdictFilter, VerdictStore
from cloud.store.pairs import PairStore
from cloud.store.pg import PgPool
from cloud.store.schema import SCHEMA_VERSION
from protos import verdict_pb2
from tests.helpers.store import OLD_THUMBNAIL, verdict, write_old_postgres, write_old_sqlite


@pytest.fixture(
    params=[("sqlite", 2), ("sqlite", 3), ("postgres", 2), ("postgres", 3)], ids=lambda p: f"{p[0]}-v{p[1]}"
)
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, int, Any]:
    """(engine, version, what opens it): a store of an earlier schema version, written as that version did."""
    engine, version = request.param
    if engine == "sqlite":
        path = tmp_path / f"v{version}.sqlite"
        write_old_sqlite(path, version)
        return engine, version, path
    dsn = request.getfixturevalue("postgres").new_dsn()
    write_old_postgres(dsn, version)
    return engine, version, dsn


def opened(engine: str, where: Any, what: str = "verdict store") -> dict[str, Any]:
    return {"path": where} if engine == "sqlite" else {"database": PgPool(where, what, max_size=2)}


async def schema_version(store: VerdictStore, engine: str, where: Any) -> int:
    if engine == "sqlite":
        with sqlite3.connect(where) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
    row = await store.database.run(
        "version", lambda conn: conn.execute("SELECT version FROM edgeglm_schema").fetchone()
    )
    return int(row[0])


async def test_a_store_of_an_earlier_version_keeps_everything_and_is_keyed_per_edge_after(
    old_store: tuple[str, int, Any],
) -> None:
    engine, before, where = old_store
    store = VerdictStore(**opened(engine, where))
    pairs = PairStore(
        where if engine == "sqlite" else None,
        max_pairs_per_key=10,
        database=None if engine == "sqlite" else PgPool(where, "pair store", max_size=2),
    )
    try:
        await store.open()
        await pairs.open()  # the closed loop's tables join the migrated database
        kept = await store.get("old-1", "gw-1")
        record = await store.get_record("old-1", "gw-1")
        thumbnail = await store.get_thumbnail("old-1", "gw-1")
        by_label = [r.sample_id for r in (await store.list_verdicts(VerdictFilter(label="person"))).items]
        listed = [(r.edge_id, r.sample_id) for r in (await store.list_verdicts()).items]
        resend = await store.put("old-1", "gw-1", verdict("old-1", text="again"))
        pending = (await store.claim("old-pending", "gw-2", "r-2", lease_s=30)).state
        others = await store.put("old-1", "gw-9", verdict("old-1", text="gw-9's own"))
        theirs = await store.get("old-1", "gw-9")
        version = await schema_version(store, engine, where)
    finally:
        await pairs.close()
        await store.close()
    assert kept == verdict("old-1", labels=("person",), text="seen before")
    assert record is not None and record.has_thumbnail and record.decision == "confirmed"
    assert thumbnail == OLD_THUMBNAIL
    assert by_label == ["old-1"]
    assert listed == [("gw-1", "old-2"), ("gw-1", "old-1")]
    assert resend is False, "dedup of the rows written before holds"
    # Version 3's live claim still holds (its replica is judging it); before version 3 nobody held one.
    assert pending == ("elsewhere" if before >= 3 else "mine")
    assert others is True and theirs is not None
    assert verdict_pb2.Verdict.FromString(theirs).text == "gw-9's own"
    assert version == SCHEMA_VERSION


async def test_migrating_twice_changes_nothing(old_store: tuple[str, int, Any]) -> None:
    engine, _, where = old_store
    for _ in range(2):
        store = VerdictStore(**opened(engine, where))
        try:
            await store.open()
            count = await store.count()
            labels = await store.list_verdicts(VerdictFilter(label="person"))
        finally:
            await store.close()
        assert count == 2 and [r.sample_id for r in labels.items] == ["old-1"]
