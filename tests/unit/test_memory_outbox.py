"""The fleet's in-memory outbox beside the agent's SQLite one, on the same samples: the same batches in
every order, the same evictions, the same totals, so the fleet's dispatchers see what an agent's would."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.metrics import EdgeMetrics
from edge.outbox import Outbox, ReplayOrder, SampleQueue
from protos import sample_pb2
from sim.fleet.memory_outbox import MemoryOutbox

T0 = 1_700_000_000.0
ORDERS: tuple[ReplayOrder, ...] = ("priority", "newest_first", "oldest_first")


def make_samples(seed: int, count: int = 40) -> list[sample_pb2.Sample]:
    """Samples full of ties: few priorities (one NaN), few capture times (some missing), ids of mixed length."""
    rng = random.Random(seed)
    samples = []
    for n in range(count):
        sample_id = f"{rng.choice(['a', 'b', 'B', 'é', 'cam0-'])}{rng.randrange(1000)}-{n}"
        sample = sample_pb2.Sample(
            sample_id=sample_id,
            edge_id="gw-1",
            camera_id="cam0",
            priority=rng.choice([0.1, 0.5, 0.5, 0.9, math.nan, -1.0]),
        )
        if rng.random() > 0.2:  # the rest age from when they are stored, as the agent's outbox does
            sample.captured_at.FromNanoseconds(int((T0 + rng.choice([0.0, 1.0, 1.0, 2.5, 7.0])) * 1e9))
        sample.image.jpeg = b"\xff\xd8" + bytes(rng.randrange(100, 2000)) + b"\xff\xd9"
        samples.append(sample)
    return samples


class Pair:
    """The SQLite outbox and the memory one, fed the same samples in the same order."""

    def __init__(self, real: Outbox, memory: MemoryOutbox) -> None:
        self.real, self.memory = real, memory

    async def put(self, sample: sample_pb2.Sample) -> tuple[list[str], list[str]]:
        return await self.real.put(sample), await self.memory.put(sample)

    async def batches(self, limit: int, order: ReplayOrder, exclude: set[str]) -> tuple[list[str], list[str]]:
        queues: tuple[SampleQueue, SampleQueue] = (self.real, self.memory)  # both as the dispatcher sees them
        real, memory = [await q.next_batch(limit, order, exclude=exclude) for q in queues]
        assert [i.payload for i in real] == [i.payload for i in memory]
        for a, b in zip(real, memory, strict=True):
            assert a.priority == b.priority or (math.isnan(a.priority) and math.isnan(b.priority))
        return [i.sample_id for i in real], [i.sample_id for i in memory]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    real = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 30, max_age_s=86_400)
    await real.open()
    yield Pair(real, MemoryOutbox("gw-1", max_bytes=1 << 30))
    await real.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_the_memory_outbox_orders_every_batch_as_the_sqlite_outbox_does(pair: Pair, seed: int) -> None:
    samples = make_samples(seed)
    rng = random.Random(seed)
    for sample in samples + samples[:5]:  # a second put of an id changes nothing in either
        assert await pair.put(sample) == ([], [])

    for order in ORDERS:
        for limit in (1, 3, 16, 100):
            exclude = {s.sample_id for s in rng.sample(samples, rng.randrange(10))}
            real, memory = await pair.batches(limit, order, exclude)
            assert real == memory, (order, limit)
            assert len(real) == min(limit, len(samples) - len(exclude))
    removed = rng.sample(samples, 15)
    for sample in removed:
        assert await pair.real.remove(sample.sample_id) is await pair.memory.remove(sample.sample_id) is True
    assert await pair.real.remove(removed[0].sample_id) is await pair.memory.remove(removed[0].sample_id) is False
    for order in ORDERS:
        real, memory = await pair.batches(100, order, set())
        assert real == memory, order

    real_stats, memory_stats = await pair.real.stats(now=T0 + 10), await pair.memory.stats(now=T0 + 10)
    assert (real_stats.samples, real_stats.bytes) == (memory_stats.samples, memory_stats.bytes)
    assert memory_stats.samples == len(pair.memory) == len(samples) - 15
    assert real_stats.oldest_age_s == pytest.approx(memory_stats.oldest_age_s)


@pytest.mark.parametrize("seed", [3, 4])
async def test_the_memory_outbox_evicts_what_the_sqlite_outbox_evicts(tmp_path: Path, seed: int) -> None:
    samples = make_samples(seed, count=30)
    bound = sum(s.ByteSize() for s in samples) // 3
    real_metrics, memory_metrics = EdgeMetrics(), EdgeMetrics()
    real = Outbox(tmp_path / "outbox.sqlite", max_bytes=bound, max_age_s=86_400, metrics=real_metrics)
    memory = MemoryOutbox("gw-1", max_bytes=bound, metrics=memory_metrics)
    try:
        evicted = 0
        for sample in samples:
            by_real, by_memory = await real.put(sample), await memory.put(sample)
            assert by_real == by_memory, sample.sample_id
            evicted += len(by_real)
        assert evicted > 0
        for order in ORDERS:
            assert [i.sample_id for i in await real.next_batch(100, order)] == [
                i.sample_id for i in await memory.next_batch(100, order)
            ]
        assert (await real.stats()).bytes == (await memory.stats()).bytes <= bound
        name, labels = "edgeglm_edge_samples_dropped_total", {"reason": "outbox_evicted"}
        assert real_metrics.registry.get_sample_value(name, labels) == evicted
        assert memory_metrics.registry.get_sample_value(name, labels) == evicted
    finally:
        await real.close()


async def test_the_memory_outbox_refuses_what_the_sqlite_outbox_refuses() -> None:
    memory = MemoryOutbox("gw-1", max_bytes=1 << 20)
    with pytest.raises(ValueError, match="not one of"):
        await memory.next_batch(5, "random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="without sample_id"):
        await memory.put(sample_pb2.Sample())
    with pytest.raises(ValueError, match="must be positive"):
        MemoryOutbox("gw-1", max_bytes=0)
    assert await memory.next_batch(0) == []
    assert (await memory.stats()).oldest_age_s == 0.0
    assert str(memory.path) == "memory:gw-1"
