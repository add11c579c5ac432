"""The store's query side on real SQLite files: filters, cursor paging, thumbnails, series, policy history,
edge snapshots, and the migration of a schema-1 file."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import cv2
import numpy as np
import pytest

from cloud.metrics import CloudMetrics
from cloud.store import (
    MAX_PAGE,
    MAX_PAGE_BYTES,
    CursorError,
    EdgeDetectionSummary,
    EdgeSnapshot,
    PolicyRecord,
    SampleMeta,
    VerdictFilter,
    VerdictRepository,
    VerdictStore,
    make_thumbnail,
    queries,
)
from cloud.store.retention import StoreRetention
from cloud.store.schema import SCHEMA_VERSION
from protos import verdict_pb2
from tests.helpers.store import REJECTED, UNSURE, verdict, write_v1_file


def meta(camera: str = "cam0", edge_labels: tuple[str, ...] = ("car",), size: int = 1000) -> SampleMeta:
    return SampleMeta(
        camera_id=camera,
        frame_seq=7,
        captured_at=999.5,
        mined_reason="uncertainty_band",
        edge_detections=tuple(EdgeDetectionSummary(label, 0.4) for label in edge_labels),
        policy_version=3,
        uplink_bytes=size,
        thumbnail_jpeg=make_thumbnail(np.full((480, 640, 3), 128, dtype=np.uint8)),
    )


@pytest.fixture
async def store(tmp_path, store_database):
    store = VerdictStore(tmp_path / "verdicts.sqlite", database=store_database("verdict store"))
    await store.open()
    yield store
    await store.close()


async def test_a_verdict_is_stored_with_its_sample_metadata_and_thumbnail(store):
    await store.put("s-1", "gw-1", verdict("s-1", text="a person by the door"), received_at=990.0, meta=meta())

    record = await store.get_record("s-1", "gw-1")
    thumbnail = await store.get_thumbnail("s-1", "gw-1")

    assert record is not None
    assert (record.edge_id, record.camera_id, record.frame_seq, record.mined_reason) == (
        "gw-1",
        "cam0",
        7,
        "uncertainty_band",
    )
    assert (record.decision, record.labels, record.text) == ("confirmed", ("person",), "a person by the door")
    assert (record.backend, record.model, record.policy_version, record.origin) == ("oracle", "truth v1", 3, "backend")
    assert (record.uplink_bytes, record.received_at, record.captured_at) == (1000, 990.0, 999.5)
    assert [(d.label, d.score) for d in record.edge_detections] == [("car", 0.4)]
    assert record.has_thumbnail
    assert thumbnail is not None and thumbnail.startswith(b"\xff\xd8\xff")
    decoded = cv2.imdecode(np.frombuffer(thumbnail, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (120, 160, 3)
    assert await store.get_thumbnail("unknown", "gw-1") is None


async def test_filters_select_by_edge_camera_label_decision_and_time(store):
    await store.put("a", "gw-1", verdict("a"), decided_at=100.0, meta=meta("cam0", ("car",)))
    await store.put("b", "gw-1", verdict("b", REJECTED, ()), decided_at=200.0, meta=meta("cam1", ("dog",)))
    await store.put("c", "gw-2", verdict("c", UNSURE, ("cat",)), decided_at=300.0, meta=meta("cam0", ()))

    async def ids(**where: object) -> list[str]:
        page = await store.list_verdicts(VerdictFilter(**where))  # type: ignore[arg-type]
        return [r.sample_id for r in page.items]

    assert await ids() == ["c", "b", "a"]
    assert await ids(edge_id="gw-1") == ["b", "a"]
    assert await ids(camera_id="cam0") == ["c", "a"]
    assert await ids(label="person") == ["a"]  # the cloud's label
    assert await ids(label="dog") == ["b"]  # the edge's label, on a sample the cloud rejected
    assert await ids(decision="unsure") == ["c"]
    assert await ids(since=150.0, until=300.0) == ["b"]
    assert await ids(edge_id="gw-1", decision="confirmed", label="car") == ["a"]


async def test_paging_by_cursor_visits_every_verdict_once_while_new_ones_arrive(store):
    for i in range(23):
        await store.put(f"s-{i:02d}", "gw-1", verdict(f"s-{i:02d}"), decided_at=1000.0 + i // 2)  # ties on time
    seen: list[str] = []
    cursor = None
    for page_number in range(10):
        page = await store.list_verdicts(limit=5, cursor=cursor)
        seen += [r.sample_id for r in page.items]
        if page_number == 1:  # a newer verdict arriving mid-paging lands before page 1, not in later pages
            await store.put("late", "gw-1", verdict("late"), decided_at=5000.0)
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == sorted((f"s-{i:02d}" for i in range(23)), key=lambda s: (1000 + int(s[2:]) // 2, s), reverse=True)
    with pytest.raises(CursorError):
        await store.list_verdicts(cursor="not-a-cursor")


async def test_series_count_bytes_and_decisions_per_edge_and_bucket(store):
    await store.put("a", "gw-1", verdict("a"), received_at=0.5, decided_at=1.0, meta=meta(size=100))
    await store.put("b", "gw-1", verdict("b", REJECTED), received_at=5.0, decided_at=6.0, meta=meta(size=200))
    await store.put("c", "gw-1", verdict("c"), received_at=12.0, decided_at=13.0, meta=meta(size=400))
    await store.put("d", "gw-2", verdict("d", UNSURE), received_at=1.0, decided_at=2.0, meta=meta(size=50))

    uplink = await store.uplink_series(10.0)
    decisions = await store.decision_series(10.0, since=0.0, until=20.0)

    assert [(p.edge_id, p.bucket_start, p.samples, p.bytes) for p in uplink] == [
        ("gw-1", 0.0, 2, 300),
        ("gw-1", 10.0, 1, 400),
        ("gw-2", 0.0, 1, 50),
    ]
    assert [(p.edge_id, p.bucket_start, p.confirmed, p.rejected, p.unsure) for p in decisions] == [
        ("gw-1", 0.0, 1, 1, 0),
        ("gw-1", 10.0, 1, 0, 0),
        ("gw-2", 0.0, 0, 0, 1),
    ]


async def test_policy_history_keeps_each_version_once_newest_first(store):
    first = PolicyRecord(1, "fleet", "", {"uplink": {"jpeg_quality": 80}}, 10.0, "cloud.yaml at start")
    second = PolicyRecord(2, "edge", "gw-1", None, 20.0, "override removed")

    assert await store.add_policy(first) and await store.add_policy(second)
    assert not await store.add_policy(first)
    assert await store.list_policies() == [second, first]
    assert await store.list_policies(before_version=2) == [first]
    assert await store.get_policy(1) == first
    assert await store.get_policy(3) is None


async def test_the_newest_snapshot_of_each_edge_is_kept_across_reopening(tmp_path, store_database):
    path = tmp_path / "verdicts.sqlite"
    first = VerdictStore(path, database=store_database("verdict store"))
    await first.add_edge_snapshots([EdgeSnapshot("gw-1", 1.0, {"samples": 1}), EdgeSnapshot("gw-2", 1.0, {})])
    await first.add_edge_snapshots([EdgeSnapshot("gw-1", 2.0, {"samples": 5})])
    await first.close()
    again: VerdictRepository = VerdictStore(path, database=store_database("verdict store"))
    try:
        snapshots = await again.latest_edge_snapshots()
    finally:
        await again.close()
    assert [(s.edge_id, s.taken_at, s.record) for s in snapshots] == [("gw-1", 2.0, {"samples": 5}), ("gw-2", 1.0, {})]


async def test_a_schema_1_file_is_migrated_and_its_verdicts_become_queryable(tmp_path):
    path = tmp_path / "v1.sqlite"
    write_v1_file(path)
    store = VerdictStore(path)
    try:
        stored = await store.get("old-1", "gw-1")
        assert stored is not None and verdict_pb2.Verdict.FromString(stored).text == "seen before the upgrade"
        assert await store.put("old-1", "gw-1", verdict("old-1", text="again")) is False  # still deduplicated
        assert await store.put("old-pending", "gw-2", verdict("old-pending"), meta=meta()) is True
        listed = (await store.list_verdicts()).items
        by_label = (await store.list_verdicts(VerdictFilter(label="person"))).items
        old = await store.get_record("old-1", "gw-1")
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]

    assert version == SCHEMA_VERSION
    assert [r.sample_id for r in listed] == ["old-pending", "old-2", "old-1"]
    assert [r.decision for r in listed] == ["confirmed", "rejected", "confirmed"]
    assert {r.sample_id for r in by_label} == {"old-1", "old-pending"}
    assert old is not None
    assert (old.text, old.camera_id, old.uplink_bytes) == ("seen before the upgrade", "", None)
    assert not old.has_thumbnail


async def test_retention_prunes_old_verdicts_with_their_thumbnails_labels_and_snapshots(store):
    now = time.time()
    await store.put("old", "gw-1", verdict("old"), decided_at=now - 10 * 86400, meta=meta())
    await store.put("new", "gw-1", verdict("new"), decided_at=now - 60, meta=meta())
    await store.add_edge_snapshots([EdgeSnapshot("gw-1", now - 10 * 86400, {}), EdgeSnapshot("gw-2", now, {})])

    assert await StoreRetention(store, retention_s=7 * 86400).prune_now() == 1

    assert await store.get_thumbnail("old", "gw-1") is None and await store.get_thumbnail("new", "gw-1") is not None
    assert [r.sample_id for r in (await store.list_verdicts(VerdictFilter(label="car"))).items] == ["new"]
    assert [s.edge_id for s in await store.latest_edge_snapshots()] == ["gw-2"]
    left = await store.database.run(
        "check", lambda conn: conn.execute("SELECT COUNT(*) FROM verdict_labels WHERE sample_id = 'old'").fetchone()
    )
    assert left[0] == 0


async def test_a_failed_prune_is_counted_in_the_task_failures_metric(tmp_path):
    closed = VerdictStore(tmp_path / "closed.sqlite")
    await closed.open()
    await closed.close()
    metrics = CloudMetrics()
    retention = StoreRetention(
        closed, retention_s=7 * 86400, every_s=3600, failures=metrics.task_failures.labels("store-retention")
    )

    def failed() -> float:
        labels = {"task": "store-retention"}
        return metrics.registry.get_sample_value("edgeglm_cloud_task_failures_total", labels) or 0.0

    retention.start()  # the first prune runs at once, on a store that refuses it
    try:
        for _ in range(1000):
            if failed() >= 1:
                break
            await asyncio.sleep(0.01)
    finally:
        await retention.stop()
    assert failed() == 1


async def test_a_page_of_large_records_ends_within_its_byte_bound_and_its_cursor_goes_on(store):
    fat = tuple(f"{'x' * 60}{n:03d}" for n in range(512))  # the most edge detections a sample may carry
    for n in range(120):
        sample_id = f"s-{n:03d}"
        await store.put(sample_id, "gw-1", verdict(sample_id), received_at=1000.0 + n, meta=meta(edge_labels=fat))
    pages, cursor = [], None
    while True:
        page = await store.list_verdicts(limit=MAX_PAGE, cursor=cursor)
        pages.append(page)
        if (cursor := page.next_cursor) is None:
            break
    sizes = [sum(record.json_size() + 1 for record in page.items) for page in pages]
    assert len(pages) >= 2, f"120 records of {sizes[0] // len(pages[0].items)} bytes fit one page"
    assert max(sizes) <= MAX_PAGE_BYTES
    assert len(pages[0].items) < MAX_PAGE
    seen = [record.sample_id for page in pages for record in page.items]
    assert sorted(seen) == [f"s-{n:03d}" for n in range(120)], "every record once, across the pages"
    # A single record larger than the bound still makes a page of one, and paging goes on.
    first = await store.database.run(
        "page", lambda conn: queries.list_verdicts(conn, VerdictFilter(), limit=10, cursor=None, max_bytes=100)
    )
    assert len(first.items) == 1 and first.next_cursor is not None
