"""The store on a real PostgreSQL server: its schema and migrations, what PostgreSQL alone refuses, the
errors an operator sees, and the whole cloud service judging samples into it.

The behaviour both engines share (dedup, pages, series, pairs, retention) is tested on both by the
other store tests (the `store_database` fixture); this module holds what is PostgreSQL's own.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.cli import app as cloud_app
from cloud.dataset import DatasetConfig, FieldDataset
from cloud.metrics import CloudMetrics
from cloud.store import StoreError, VerdictStore
from cloud.store.pairs import PairStore
from cloud.store.pg import PgPool
from cloud.store.schema import SCHEMA_VERSION
from protos import verdict_pb2
from tests.helpers.cloud import busy_frames, make_config, running, send
from tests.helpers.postgres import PostgresServer


def verdict(sample_id: str, text: str = "") -> bytes:
    confirmed = verdict_pb2.DECISION_CONFIRMED
    return verdict_pb2.Verdict(sample_id=sample_id, decision=confirmed, text=text).SerializeToString()


async def columns_of(store: VerdictStore) -> dict[str, set[str]]:
    rows = await store.database.run(
        "columns",
        lambda conn: conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        ).fetchall(),
    )
    tables: dict[str, set[str]] = {}
    for table, column in rows:
        tables.setdefault(str(table), set()).add(str(column))
    return tables


async def test_the_schema_has_sqlite_s_tables_and_columns_and_replicas_migrate_it_once(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    dsn = postgres.new_dsn()
    replicas = [VerdictStore(database=PgPool(dsn, "verdict store")) for _ in range(3)]
    await asyncio.gather(*(replica.open() for replica in replicas))  # at once: the advisory lock orders them
    try:
        tables = await columns_of(replicas[0])
        versions = await replicas[0].database.run(
            "version", lambda conn: conn.execute("SELECT version FROM edgeglm_schema").fetchall()
        )
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))
    assert versions == [(SCHEMA_VERSION,)]
    lite = VerdictStore(tmp_path / "verdicts.sqlite")
    await lite.open()
    pairs = PairStore(tmp_path / "verdicts.sqlite", max_pairs_per_key=10)
    await pairs.open()
    await pairs.close()
    await lite.close()
    # On SQLite the field dataset's records are in its own index file (its folder is whole by itself).
    dataset = FieldDataset(DatasetConfig(path=tmp_path / "dataset"), CloudMetrics())
    await dataset.open()
    await dataset.close()
    expected: dict[str, set[str]] = {}
    for path in (tmp_path / "verdicts.sqlite", tmp_path / "dataset" / "index.sqlite"):
        with sqlite3.connect(path) as conn:
            names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for name in names:
                if name != "sqlite_sequence":
                    expected[name] = {row[1] for row in conn.execute(f"PRAGMA table_info({name})")}
    assert {name: cols for name, cols in tables.items() if name != "edgeglm_schema"} == expected


async def test_a_database_of_a_newer_schema_is_refused_naming_the_server(postgres: PostgresServer) -> None:
    dsn = postgres.new_dsn()
    first = VerdictStore(database=PgPool(dsn, "verdict store"))
    await first.open()
    await first.database.run("newer", lambda conn: conn.execute("UPDATE edgeglm_schema SET version = 99"))
    await first.close()
    again = VerdictStore(database=PgPool(dsn, "verdict store"))
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:\d+/t_\w+.*schema version 99 is newer"):
        await again.open()
    await again.close()


async def test_text_with_nul_characters_is_kept_and_blobs_are_byte_exact(postgres: PostgresServer) -> None:
    store = VerdictStore(database=PgPool(postgres.new_dsn(), "verdict store"))
    blob = verdict("s-1", text="a cat\x00 by the door")
    try:
        assert await store.put("s-1", "gw-1", blob)
        record = await store.get_record("s-1", "gw-1")
        assert await store.get("s-1", "gw-1") == blob
    finally:
        await store.close()
    assert record is not None and record.text == "a cat\ufffd by the door"


async def test_an_unreachable_server_is_a_store_error_that_never_shows_the_password(tmp_path: Path) -> None:
    store = VerdictStore(database=PgPool("postgresql://edgeglm:s3cret-pw@127.0.0.1:1/edgeglm", "verdict store"))
    with pytest.raises(StoreError) as raised:
        await asyncio.wait_for(store.open(), 60)
    await store.close()
    assert "postgresql://edgeglm@127.0.0.1:1/edgeglm" in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)


def test_check_config_wants_a_dsn_file_for_postgres_and_one_that_exists(tmp_path: Path) -> None:
    base = "backend: {kind: oracle, ground_truth: {}}\n"
    unset = tmp_path / "unset.yaml"
    unset.write_text(base + "store: {kind: postgres}\n")
    missing = tmp_path / "missing.yaml"
    missing.write_text(base + "store: {kind: postgres, dsn_file: secrets/pg-dsn}\n")
    results = [CliRunner().invoke(cloud_app, ["check-config", str(path)]) for path in (unset, missing)]
    assert [r.exit_code for r in results] == [1, 1]
    assert "store: kind is postgres but dsn_file is unset" in results[0].stderr
    assert f"store.dsn_file: {tmp_path / 'secrets' / 'pg-dsn'} does not exist" in results[1].stderr


async def test_the_cloud_service_judges_samples_into_postgres_and_its_closed_loop_keeps_pairs_there(
    postgres: PostgresServer, tmp_path: Path, clip: Path
) -> None:
    dsn_file = tmp_path / "pg-dsn"
    dsn_file.write_text(postgres.new_dsn() + "\n")
    config = make_config(
        tmp_path,
        clip,
        store={"kind": "postgres", "dsn_file": str(dsn_file)},
        policy={"closed_loop": {"enabled": True}},
    )
    frames = busy_frames(clip)[:4]
    async with running(config) as service:
        sent = await send(service, clip, "gw-1", frames, "door")
        assert service.store.where.startswith("postgresql://edgeglm@127.0.0.1:")
        assert await service.store.count() == len(frames)
        assert service.bands is not None
    assert not (tmp_path / "state" / "verdicts.sqlite").exists(), "no SQLite file on the side"
    reopened = VerdictStore(database=PgPool(dsn_file.read_text().strip(), "verdict store"))
    pairs = PairStore(None, max_pairs_per_key=100, database=PgPool(dsn_file.read_text().strip(), "pair store"))
    try:
        stored = [await reopened.get(sample.sample_id, sample.edge_id) for sample in sent]
        paired = await pairs.count_pairs()
    finally:
        await reopened.close()
        await pairs.close()
    assert all(blob is not None for blob in stored)
    assert paired >= 1, "the closed loop wrote its pairs to the same database"
