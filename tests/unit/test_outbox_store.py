"""The outbox on a SQLite file in tmp_path: store, order, ack, byte and age bounds, reopen."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from edge.metrics import EdgeMetrics
from edge.outbox import Outbox, OutboxError, OutboxStats
from protos import sample_pb2

T0 = 1_700_000_000.0


def make_sample(sample_id: str, *, priority: float = 0.5, captured_at: float = T0, jpeg_bytes: int = 1000):
    sample = sample_pb2.Sample(sample_id=sample_id, edge_id="edge-1", camera_id="cam-1", priority=priority)
    sample.captured_at.FromNanoseconds(int(captured_at * 1e9))
    sample.image.jpeg = b"\xff\xd8" + bytes(jpeg_bytes - 4) + b"\xff\xd9"
    return sample


def dropped(metrics: EdgeMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("edgeglm_edge_samples_dropped_total", {"reason": reason}) or 0.0


@pytest.fixture
def metrics() -> EdgeMetrics:
    return EdgeMetrics()


@pytest.fixture
async def outbox(tmp_path, metrics):
    box = Outbox(tmp_path / "state" / "outbox.sqlite", max_bytes=1 << 30, max_age_s=3600, metrics=metrics)
    await box.open()
    yield box
    await box.close()


async def ids(box: Outbox, limit: int = 100, order="priority", exclude=frozenset()) -> list[str]:
    return [s.sample_id for s in await box.next_batch(limit, order, exclude)]


async def test_put_then_next_batch_returns_the_stored_bytes_and_remove_deletes_them(outbox):
    sample = make_sample("s-1")
    assert await outbox.put(sample) == []

    (got,) = await outbox.next_batch(10, "priority", set())
    assert got.sample() == sample
    assert got.payload == sample.SerializeToString()  # sent as stored, not serialized again
    assert [i.sample() for i in await outbox.next_batch(10, "priority", set())] == [sample]  # stays until removed

    assert await outbox.remove("s-1") is True
    assert await outbox.remove("s-1") is False
    assert await outbox.next_batch(10, "priority", set()) == []
    assert (await outbox.stats(now=T0)).samples == 0


async def test_a_second_put_of_the_same_sample_id_changes_nothing(outbox):
    await outbox.put(make_sample("s-1", priority=0.2, jpeg_bytes=1000))
    await outbox.put(make_sample("s-1", priority=0.9, jpeg_bytes=5000))

    (got,) = await outbox.next_batch(10, "priority", set())
    assert got.priority == pytest.approx(0.2)
    stats = await outbox.stats(now=T0)
    assert stats.samples == 1
    assert stats.bytes == make_sample("s-1", priority=0.2).ByteSize()


async def test_priority_order_sends_the_most_uncertain_first_then_the_newest(outbox):
    await outbox.put(make_sample("low-old", priority=0.1, captured_at=T0))
    await outbox.put(make_sample("high-old", priority=0.9, captured_at=T0))
    await outbox.put(make_sample("high-new", priority=0.9, captured_at=T0 + 5))
    await outbox.put(make_sample("mid", priority=0.5, captured_at=T0 + 1))

    assert await ids(outbox) == ["high-new", "high-old", "mid", "low-old"]
    assert await ids(outbox, limit=2) == ["high-new", "high-old"]


async def test_replay_orders_go_by_capture_time_either_way(outbox):
    for i, priority in enumerate([0.3, 0.9, 0.1, 0.5]):
        await outbox.put(make_sample(f"t{i}", priority=priority, captured_at=T0 + i))

    assert await ids(outbox, order="newest_first") == ["t3", "t2", "t1", "t0"]
    assert await ids(outbox, order="oldest_first") == ["t0", "t1", "t2", "t3"]
    assert await ids(outbox, limit=3, order="oldest_first", exclude={"t1"}) == ["t0", "t2", "t3"]


async def test_samples_in_flight_are_left_out_and_the_batch_is_filled_past_them(outbox):
    for i in range(5):
        await outbox.put(make_sample(f"s{i}", priority=i / 10))
    in_flight = {"s4": None, "s3": None}

    assert await ids(outbox, limit=2, exclude=in_flight.keys()) == ["s2", "s1"]


async def test_an_unknown_order_is_refused_and_a_zero_limit_returns_nothing(outbox):
    await outbox.put(make_sample("s-1"))
    with pytest.raises(ValueError, match="newest_first"):
        await outbox.next_batch(1, "random", set())
    assert await outbox.next_batch(0, "priority", set()) == []


async def test_a_full_outbox_evicts_the_lowest_priority_first_and_counts_it(tmp_path, metrics):
    size = make_sample("x").ByteSize()
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=3 * size, max_age_s=3600, metrics=metrics)
    try:
        assert await box.put(make_sample("a", priority=0.5, captured_at=T0)) == []
        assert await box.put(make_sample("b", priority=0.2, captured_at=T0 + 1)) == []
        assert await box.put(make_sample("c", priority=0.2, captured_at=T0 + 2)) == []

        # Full: the lowest priority goes, and among equals the oldest.
        assert await box.put(make_sample("d", priority=0.9, captured_at=T0 + 3)) == ["b"]
        # A newcomer that ranks below everything is the one that goes.
        assert await box.put(make_sample("e", priority=0.0, captured_at=T0 + 4)) == ["e"]
        # A big one evicts as many as it takes.
        assert await box.put(make_sample("f", priority=0.7, captured_at=T0 + 5, jpeg_bytes=2000)) == ["c", "a"]

        assert sorted(await ids(box)) == ["d", "f"]
        assert dropped(metrics, "outbox_evicted") == 4
        assert (await box.stats(now=T0)).bytes <= 3 * size
    finally:
        await box.close()


async def test_samples_older_than_max_age_expire_and_are_counted(tmp_path, metrics):
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20, max_age_s=60, metrics=metrics)
    try:
        await box.put(make_sample("old", captured_at=T0))
        await box.put(make_sample("edge", captured_at=T0 + 40))
        await box.put(make_sample("new", captured_at=T0 + 90))

        assert await box.expire(now=T0 + 100) == 1
        assert await box.expire(now=T0 + 100) == 0
        assert sorted(await ids(box)) == ["edge", "new"]
        assert dropped(metrics, "outbox_expired") == 1
        assert await box.expire(now=T0 + 1000) == 2
        assert dropped(metrics, "outbox_expired") == 3
    finally:
        await box.close()


async def test_stats_count_samples_bytes_and_the_age_of_the_oldest(outbox):
    assert await outbox.stats(now=T0) == OutboxStats(samples=0, bytes=0, oldest_age_s=0.0)
    a, b = make_sample("a", captured_at=T0), make_sample("b", captured_at=T0 + 10, jpeg_bytes=3000)
    await outbox.put(a)
    await outbox.put(b)

    assert await outbox.stats(now=T0 + 25) == OutboxStats(
        samples=2, bytes=a.ByteSize() + b.ByteSize(), oldest_age_s=25.0
    )
    await outbox.remove("a")
    assert await outbox.stats(now=T0 + 25) == OutboxStats(samples=1, bytes=b.ByteSize(), oldest_age_s=15.0)


async def test_reopening_the_file_keeps_the_samples_and_their_byte_count(tmp_path):
    path = tmp_path / "outbox.sqlite"
    first = Outbox(path, max_bytes=1 << 20, max_age_s=3600, metrics=None)
    samples = [make_sample(f"s{i}", priority=i / 10, captured_at=T0 + i) for i in range(5)]
    for sample in samples:
        await first.put(sample)
    await first.remove("s0")
    await first.close()

    again = Outbox(path, max_bytes=1 << 20, max_age_s=3600, metrics=None)
    try:
        assert [i.sample() for i in await again.next_batch(10, "oldest_first", set())] == samples[1:]
        stats = await again.stats(now=T0)
        assert (stats.samples, stats.bytes) == (4, sum(s.ByteSize() for s in samples[1:]))
        assert await again.put(samples[2]) == []  # still idempotent across restarts
    finally:
        await again.close()


async def test_the_file_is_in_wal_mode_and_written_from_one_thread_that_is_not_the_loops(outbox):
    await outbox.put(make_sample("s-1"))
    threads = {t.name for t in threading.enumerate()}
    assert any(name.startswith("outbox") for name in threads)
    with sqlite3.connect(outbox.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_a_sample_without_an_id_is_refused(outbox):
    with pytest.raises(ValueError, match="sample_id"):
        await outbox.put(sample_pb2.Sample(priority=0.5))


async def test_a_sample_without_capture_time_ages_from_when_it_was_stored(outbox):
    sample = sample_pb2.Sample(sample_id="no-time", priority=float("nan"))
    await outbox.put(sample)
    assert await outbox.expire() == 0
    assert (await outbox.stats()).oldest_age_s < 60
    (got,) = await outbox.next_batch(1, "priority", set())
    assert got.sample_id == "no-time"


async def test_calls_after_close_raise_a_clear_error(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20, max_age_s=60, metrics=None)
    await box.put(make_sample("s-1"))
    await box.close()
    await box.close()
    with pytest.raises(OutboxError, match="closed outbox"):
        await box.put(make_sample("s-2"))


@pytest.mark.parametrize(("max_bytes", "max_age_s"), [(0, 60), (1024, 0), (1024, float("nan"))])
def test_bounds_that_are_not_positive_are_refused(tmp_path, max_bytes, max_age_s):
    with pytest.raises(ValueError, match="outbox max_"):
        Outbox(tmp_path / "outbox.sqlite", max_bytes=max_bytes, max_age_s=max_age_s, metrics=None)


async def test_a_path_that_cannot_be_created_fails_at_open_naming_the_file(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    box = Outbox(blocker / "outbox.sqlite", max_bytes=1 << 20, max_age_s=60, metrics=None)
    try:
        with pytest.raises(OutboxError, match="not-a-folder"):
            await box.open()
    finally:
        await box.close()
