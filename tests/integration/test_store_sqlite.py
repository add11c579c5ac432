"""VerdictStore on a real SQLite file and a real PostgreSQL database: dedup per edge on (edge_id, sample_id),
durable across reopen, clear errors; WAL and the schema version of the SQLite file (PostgreSQL's:
test_store_postgres)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from cloud.store import StoreError, VerdictStore
from cloud.store.schema import SCHEMA_VERSION
from protos import verdict_pb2


def verdict(sample_id: str, text: str = "first") -> bytes:
    return verdict_pb2.Verdict(
        sample_id=sample_id, decision=verdict_pb2.DECISION_CONFIRMED, text=text
    ).SerializeToString()


@pytest.fixture
async def store(tmp_path, store_database):
    store = VerdictStore(tmp_path / "cloud" / "verdicts.db", database=store_database("verdict store"))
    await store.open()
    yield store
    await store.close()


async def test_put_stores_a_verdict_once_and_get_returns_it(store):
    assert await store.put("s-1", "edge-1", verdict("s-1")) is True
    assert await store.put("s-1", "edge-1", verdict("s-1", text="second")) is False

    stored = verdict_pb2.Verdict.FromString(await store.get("s-1", "edge-1"))
    assert stored.text == "first"
    assert await store.get("unknown", "edge-1") is None
    assert await store.count() == 1


async def test_two_edges_using_one_sample_id_each_keep_their_own_sample_and_verdict(store):
    """A sample_id is its edge's own name: another edge's sample of that id is another sample."""
    assert await store.put("s-1", "edge-1", verdict("s-1", text="edge 1's")) is True
    assert (await store.claim("s-1", "edge-2", "replica-a", lease_s=30)).state == "mine"
    assert await store.put("s-1", "edge-2", verdict("s-1", text="edge 2's")) is True
    assert await store.put("s-1", "edge-2", verdict("s-1", text="a resend")) is False

    one = verdict_pb2.Verdict.FromString(await store.get("s-1", "edge-1"))
    two = verdict_pb2.Verdict.FromString(await store.get("s-1", "edge-2"))
    claim = await store.claim("s-1", "edge-1", "replica-a", lease_s=30)
    assert (one.text, two.text) == ("edge 1's", "edge 2's")
    assert claim.state == "judged" and claim.verdict == verdict("s-1", text="edge 1's")
    assert await store.get("s-1", "edge-3") is None and not await store.contains("s-1", "edge-3")
    assert await store.count() == 2
    assert {(r.edge_id, r.text) for r in (await store.list_verdicts()).items} == {
        ("edge-1", "edge 1's"),
        ("edge-2", "edge 2's"),
    }


async def test_verdicts_survive_closing_and_reopening_the_database(tmp_path, store_database):
    path = tmp_path / "verdicts.db"
    first = VerdictStore(path, database=store_database("verdict store"))
    await first.put("s-1", "edge-1", verdict("s-1"))
    await first.close()

    again = VerdictStore(path, database=store_database("verdict store"))
    try:
        assert await again.get("s-1", "edge-1") == verdict("s-1")
        assert await again.put("s-1", "edge-1", verdict("s-1", text="replayed")) is False
        assert await again.count() == 1
    finally:
        await again.close()


async def test_concurrent_puts_from_many_tasks_all_land_once(store):
    ids = [f"s-{i}" for i in range(40)]

    first = await asyncio.gather(*(store.put(i, "edge-1", verdict(i)) for i in ids))
    again = await asyncio.gather(*(store.put(i, "edge-1", verdict(i)) for i in ids))

    assert all(first) and not any(again)
    assert await store.count() == 40


async def test_database_is_in_wal_mode_with_the_schema_versioned(tmp_path):
    store = VerdictStore(tmp_path / "verdicts.db")
    await store.put("s-1", "edge-1", verdict("s-1"))
    await store.close()

    with sqlite3.connect(tmp_path / "verdicts.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


async def test_prune_forgets_old_verdicts_only(store):
    await store.put("old", "edge-1", verdict("old"), decided_at=1_000.0)
    await store.put("new", "edge-1", verdict("new"), decided_at=2_000.0)

    assert await store.prune(decided_before=1_500.0) == 1

    assert await store.get("old", "edge-1") is None
    assert await store.get("new", "edge-1") is not None


async def test_a_database_from_a_newer_version_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "verdicts.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    store = VerdictStore(path)

    with pytest.raises(StoreError, match="schema version 99 is newer"):
        await store.open()
    await store.close()


async def test_a_store_path_that_cannot_be_a_database_fails_open_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = VerdictStore(blocker / "verdicts.db")

    with pytest.raises(StoreError, match=r"file/verdicts\.db"):
        await store.open()
    await store.close()


async def test_a_closed_store_refuses_work(tmp_path, store_database):
    store = VerdictStore(tmp_path / "verdicts.db", database=store_database("verdict store"))
    await store.close()
    await store.close()  # again: nothing happens

    with pytest.raises(StoreError, match="closed verdict store"):
        await store.get("s-1", "edge-1")
