"""A damaged outbox never stops the agent: bad rows are deleted and counted, a bad file is moved aside."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from edge.metrics import EdgeMetrics
from edge.outbox import Outbox
from protos import sample_pb2

T0 = 1_700_000_000.0


def make_sample(sample_id: str, *, priority: float = 0.5, captured_at: float = T0, jpeg_bytes: int = 1000):
    sample = sample_pb2.Sample(sample_id=sample_id, edge_id="edge-1", camera_id="cam-1", priority=priority)
    sample.captured_at.FromNanoseconds(int(captured_at * 1e9))
    sample.image.jpeg = bytes(jpeg_bytes)
    return sample


def dropped(metrics: EdgeMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("edgeglm_edge_samples_dropped_total", {"reason": reason}) or 0.0


def write_raw_row(path, sample_id: str, priority: float, data: bytes) -> None:
    """What a bug or a bit flip could leave behind, written past the Outbox (which must be closed)."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "INSERT INTO outbox (sample_id, priority, created_at, size, data) VALUES (?, ?, ?, ?, ?)",
            (sample_id, priority, T0, len(data), data),
        )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x0a\xff\x01abc", id="truncated-field"),
        pytest.param(b"\xff\xff\xff\xff", id="garbage"),
        pytest.param(sample_pb2.Sample(sample_id="someone-else").SerializeToString(), id="names-another-sample"),
    ],
)
async def test_a_row_that_does_not_parse_is_deleted_counted_and_skipped(tmp_path, data):
    path = tmp_path / "outbox.sqlite"
    first = Outbox(path, max_bytes=1 << 20, max_age_s=3600, metrics=None)
    await first.put(make_sample("good-1", priority=0.1))
    await first.put(make_sample("good-2", priority=0.2))
    await first.close()
    write_raw_row(path, "bad", 0.9, data)  # ranks first, so the next batch meets it

    metrics = EdgeMetrics()
    box = Outbox(path, max_bytes=1 << 20, max_age_s=3600, metrics=metrics)
    try:
        batch = await box.next_batch(2, "priority", set())
        assert [s.sample_id for s in batch] == ["good-2", "good-1"]  # the batch is still full
        assert dropped(metrics, "outbox_corrupt") == 1
        assert await box.remove("bad") is False  # gone from the file
        stats = await box.stats(now=T0)
        assert (stats.samples, stats.bytes) == (2, sum(len(s.payload) for s in batch))
    finally:
        await box.close()


async def test_a_file_that_is_not_a_database_is_moved_aside_and_a_new_outbox_starts(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not SQLite" * 512)
    box = Outbox(path, max_bytes=1 << 20, max_age_s=3600, metrics=None)
    try:
        assert await box.put(make_sample("after")) == []
        assert [s.sample_id for s in await box.next_batch(5, "priority", set())] == ["after"]
    finally:
        await box.close()
    (moved,) = tmp_path.glob("outbox.sqlite.corrupt-*")
    assert moved.read_bytes().startswith(b"this is not SQLite")
    assert "damaged" in caplog.text
