"""PairStore on a real SQLite file (next to the verdict store in the same file) and on a real PostgreSQL
database: bounds, age, reopen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloud.store import VerdictStore
from cloud.store.pairs import BandMoveRow, PairRow, PairStore
from protos import verdict_pb2


def pairs(edge_id: str, label: str, count: int, start: float = 0.0) -> list[PairRow]:
    return [PairRow(edge_id, label, i / count, i % 2 == 0, 1.0, i % 5 == 0, start + i) for i in range(count)]


async def test_each_key_keeps_its_newest_pairs_only(tmp_path: Path, store_database: Any) -> None:
    store = PairStore(tmp_path / "verdicts.sqlite", max_pairs_per_key=50, database=store_database("pair store"))
    await store.open()
    try:
        await store.add_pairs(pairs("gw-1", "person", 80))
        await store.add_pairs(pairs("gw-1", "car", 30) + pairs("gw-2", "person", 10))
        await store.add_pairs(pairs("gw-1", "person", 5, start=1000.0))
        loaded = await store.load_pairs(since=0.0)
    finally:
        await store.close()
    person = [p for p in loaded if (p.edge_id, p.label) == ("gw-1", "person")]
    assert len(person) == 50
    assert [p.observed_at for p in person[-5:]] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]  # oldest first
    assert person[0].observed_at == 35.0  # 80 + 5 written, the 35 oldest gone
    assert sum(p.label == "car" for p in loaded) == 30
    assert sum(p.edge_id == "gw-2" for p in loaded) == 10


async def test_pairs_and_moves_survive_reopening_and_old_pairs_are_pruned(tmp_path: Path, store_database: Any) -> None:
    path = tmp_path / "verdicts.sqlite"
    store = PairStore(path, max_pairs_per_key=100, max_moves_per_key=2, database=store_database("pair store"))
    await store.open()
    await store.add_pairs(pairs("gw-1", "person", 20))
    for version in (3, 4, 5):
        await store.add_move(BandMoveRow("gw-1", "person", float(version), 0.3, 0.6, version, f"move {version}"))
    await store.close()
    again = PairStore(path, max_pairs_per_key=100, max_moves_per_key=2, database=store_database("pair store"))
    await again.open()
    try:
        assert len(await again.load_pairs(since=0.0)) == 20
        assert len(await again.load_pairs(since=15.0)) == 5
        assert [m.version for m in await again.load_moves()] == [4, 5]
        assert await again.prune_pairs(observed_before=10.0) == 10
        assert await again.count_pairs() == 10
        first = (await again.load_pairs(since=0.0))[0]
        assert (first.score, first.confirmed, first.audit, first.weight) == (0.5, True, True, 1.0)
    finally:
        await again.close()


async def test_the_pair_tables_live_beside_the_verdicts_in_one_database(tmp_path: Path, store_database: Any) -> None:
    path = tmp_path / "verdicts.sqlite"
    verdicts = VerdictStore(path, database=store_database("verdict store"))
    pair_store = PairStore(path, max_pairs_per_key=10, database=store_database("pair store"))
    await verdicts.open()
    await pair_store.open()
    try:
        stored = verdict_pb2.Verdict(sample_id="s-1", decision=verdict_pb2.DECISION_CONFIRMED).SerializeToString()
        assert await verdicts.put("s-1", "gw-1", stored)
        await pair_store.add_pairs(pairs("gw-1", "person", 3))
        assert await verdicts.get("s-1", "gw-1") == stored
        assert await pair_store.count_pairs() == 3
    finally:
        await pair_store.close()
        await verdicts.close()
    reopened = VerdictStore(path, database=store_database("verdict store"))
    await reopened.open()
    try:
        assert await reopened.count() == 1
    finally:
        await reopened.close()
