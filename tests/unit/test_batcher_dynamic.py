"""The dynamic batcher's Triton semantics, with a fake backend: batch forming, bounds, deadlines, failures.

No test asserts a duration: waits that should not end (a huge max_queue_delay_ms, a backend held on
an event) make an outcome depend only on the rule under test.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cloud.batcher import (
    BackendError,
    BatcherConfig,
    BatcherStoppedError,
    DynamicBatcher,
    InferenceTimeoutError,
    QueueFullError,
)
from cloud.convert import BackendResult, SampleFailure, SampleInput
from cloud.metrics import CloudMetrics
from tests.helpers.wait import wait_until

NEVER_MS = 60_000.0  # a queue delay no test waits out (the config's maximum)
# Waits on the batcher's state poll every millisecond: the loop runs the batcher between polls.
POLL = {"timeout_s": 10.0, "poll_s": 0.001}


class FakeBackend:
    """Echoes each sample_id as the result text; can be held on an event, fail, or miscount."""

    name = "fake"
    model_name = "fake-model"
    model_version = "1"

    def __init__(self, max_batch_size=64, fail_on=(), short_by=0, cannot_judge=()):
        self.max_batch_size = max_batch_size
        self.cannot_judge = set(cannot_judge)
        self.deadlines: list[float | None] = []
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_on = set(fail_on)
        self.short_by = short_by
        self.starts = 0
        self.closes = 0

    async def start(self):
        self.starts += 1

    async def close(self):
        self.closes += 1

    async def infer(self, batch, deadline=None):
        ids = [s.sample_id for s in batch]
        self.batches.append(ids)
        self.deadlines.append(deadline)
        await self.release.wait()
        if self.fail_on & set(ids):
            raise RuntimeError("CUDA out of memory")
        results = [
            SampleFailure("timeout", f"{s.sample_id}: no answer")
            if s.sample_id in self.cannot_judge
            else BackendResult("confirmed", [], s.sample_id, 1.0)
            for s in batch
        ]
        return results[: len(batch) - self.short_by]

    @property
    def sizes(self):
        return [len(b) for b in self.batches]


def sample(sample_id: str) -> SampleInput:
    return SampleInput(
        sample_id=sample_id,
        edge_id="edge-1",
        camera_id="cam",
        frame_seq=0,
        captured_at=0.0,
        image=np.zeros((2, 2, 3), np.uint8),
        crop=None,
        frame_size=(2, 2),
        detections=(),
        mined_reason="random_audit",
        priority=0.5,
        trace_id="",
    )


@pytest.fixture
def metrics():
    return CloudMetrics()


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


def failures(metrics, reason):
    return value(metrics, "edgeglm_inference_request_failure_total", backend="fake", reason=reason)


async def started(backend, metrics, **config) -> DynamicBatcher:
    batcher = DynamicBatcher(backend, BatcherConfig(**config), metrics)
    await batcher.start()
    return batcher


async def test_full_batches_leave_at_once_under_load(metrics):
    backend = FakeBackend()
    batcher = await started(backend, metrics, max_batch_size=4, max_queue_delay_ms=NEVER_MS)

    replies = await asyncio.wait_for(asyncio.gather(*(batcher.submit(sample(f"s{i}"), 30) for i in range(8))), 10)

    assert backend.sizes == [4, 4]
    assert [result.text for result, _, _ in replies] == [f"s{i}" for i in range(8)]
    assert value(metrics, "edgeglm_inference_exec_count_total", backend="fake") == 2
    assert value(metrics, "edgeglm_inference_request_success_total", backend="fake") == 8
    assert value(metrics, "edgeglm_inference_batch_size_sum", backend="fake") == 8
    await batcher.stop()


async def test_batches_grow_while_the_backend_is_busy(metrics):
    backend = FakeBackend()
    backend.release.clear()
    batcher = await started(backend, metrics, max_batch_size=8, max_queue_delay_ms=0)
    first = asyncio.create_task(batcher.submit(sample("first"), 30))
    await wait_until(lambda: backend.batches, "a batch at the backend", **POLL)

    waiting = [asyncio.create_task(batcher.submit(sample(f"s{i}"), 30)) for i in range(5)]
    await wait_until(lambda: batcher.queue_depth == 5, "batcher.queue_depth == 5", **POLL)
    backend.release.set()
    await asyncio.gather(first, *waiting)

    assert backend.sizes == [1, 5]
    await batcher.stop()


async def test_batch_is_capped_by_the_backends_own_max_batch_size(metrics):
    backend = FakeBackend(max_batch_size=2)
    batcher = await started(backend, metrics, max_batch_size=8, max_queue_delay_ms=NEVER_MS)

    await asyncio.wait_for(asyncio.gather(*(batcher.submit(sample(f"s{i}"), 30) for i in range(6))), 10)

    assert backend.sizes == [2, 2, 2]
    assert batcher.batch_limit == 2
    await batcher.stop()


async def test_lone_request_leaves_after_max_queue_delay(metrics):
    backend = FakeBackend()
    batcher = await started(backend, metrics, max_batch_size=8, max_queue_delay_ms=5)

    result, queue_ms, infer_ms = await asyncio.wait_for(batcher.submit(sample("alone"), 30), 10)

    assert result.text == "alone"
    assert backend.sizes == [1]
    assert queue_ms >= 0 and infer_ms >= 0
    await batcher.stop()


async def test_requests_arriving_within_the_delay_share_a_batch(metrics):
    backend = FakeBackend()
    batcher = await started(backend, metrics, max_batch_size=8, max_queue_delay_ms=500)

    await asyncio.wait_for(asyncio.gather(*(batcher.submit(sample(f"s{i}"), 30) for i in range(3))), 10)

    assert backend.sizes == [3]
    await batcher.stop()


async def test_full_queue_refuses_at_once_and_counts_it(metrics):
    backend = FakeBackend()
    backend.release.clear()
    batcher = await started(backend, metrics, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
    running = asyncio.create_task(batcher.submit(sample("running"), 30))
    await wait_until(lambda: backend.batches, "a batch at the backend", **POLL)
    queued = [asyncio.create_task(batcher.submit(sample(f"q{i}"), 30)) for i in range(2)]
    await wait_until(lambda: batcher.queue_depth == 2, "batcher.queue_depth == 2", **POLL)

    with pytest.raises(QueueFullError, match="queue full"):
        await batcher.submit(sample("one too many"), 30)

    backend.release.set()
    await asyncio.gather(running, *queued)
    assert failures(metrics, "queue_full") == 1
    assert "one too many" not in [name for batch in backend.batches for name in batch]
    await batcher.stop()


async def test_request_whose_deadline_passes_in_the_queue_is_never_inferred(metrics):
    backend = FakeBackend()
    backend.release.clear()
    batcher = await started(backend, metrics, max_batch_size=1, max_queue_delay_ms=0)
    running = asyncio.create_task(batcher.submit(sample("running"), 30))
    await wait_until(lambda: backend.batches, "a batch at the backend", **POLL)

    with pytest.raises(InferenceTimeoutError, match=r"sample late: deadline passed .*queued, not inferred"):
        await batcher.submit(sample("late"), 0.05)

    backend.release.set()
    await running
    assert backend.batches == [["running"]]
    assert batcher.queue_depth == 0
    assert failures(metrics, "timeout") == 1
    assert value(metrics, "edgeglm_inference_queue_depth") == 0
    await batcher.stop()


async def test_request_whose_deadline_passes_in_the_backend_times_out_and_its_result_is_dropped(metrics):
    backend = FakeBackend()
    backend.release.clear()
    batcher = await started(backend, metrics, max_batch_size=1, max_queue_delay_ms=0)

    with pytest.raises(InferenceTimeoutError, match="in the backend"):
        await batcher.submit(sample("slow"), 0.05)

    backend.release.set()
    result, _, _ = await asyncio.wait_for(batcher.submit(sample("next"), 30), 10)
    assert result.text == "next"
    assert failures(metrics, "timeout") == 1
    assert value(metrics, "edgeglm_inference_request_success_total", backend="fake") == 1
    await batcher.stop()


async def test_a_sample_the_backend_fails_on_fails_alone_and_the_batcher_keeps_serving(metrics):
    """The batch fails; each of its samples is judged again alone; only the poison fails (batch poisoning)."""
    backend = FakeBackend(fail_on={"poison"})
    batcher = await started(backend, metrics, max_batch_size=3, max_queue_delay_ms=NEVER_MS)

    outcomes = await asyncio.gather(
        *(batcher.submit(sample(name), 30) for name in ("a", "poison", "b")), return_exceptions=True
    )
    after = await asyncio.gather(*(batcher.submit(sample(f"c{i}"), 30) for i in range(3)))

    assert isinstance(outcomes[1], BackendError) and "CUDA out of memory" in str(outcomes[1])
    assert [outcomes[0][0].text, outcomes[2][0].text] == ["a", "b"]  # type: ignore[index]
    assert backend.batches[:4] == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]
    assert [result.text for result, _, _ in after] == ["c0", "c1", "c2"]
    assert failures(metrics, "backend_error") == 1
    assert value(metrics, "edgeglm_inference_request_success_total", backend="fake") == 5
    await batcher.stop()


async def test_backend_returning_too_few_results_fails_the_batch(metrics):
    backend = FakeBackend(short_by=1)
    batcher = await started(backend, metrics, max_batch_size=2, max_queue_delay_ms=NEVER_MS)

    outcomes = await asyncio.gather(*(batcher.submit(sample(f"s{i}"), 30) for i in range(2)), return_exceptions=True)

    assert all(
        isinstance(outcome, BackendError) and "0 results for a batch of 1" in str(outcome) for outcome in outcomes
    )
    await batcher.stop()


async def test_caller_that_gives_up_takes_its_request_out_of_the_queue(metrics):
    backend = FakeBackend()
    backend.release.clear()
    batcher = await started(backend, metrics, max_batch_size=1, max_queue_delay_ms=0)
    running = asyncio.create_task(batcher.submit(sample("running"), 30))
    await wait_until(lambda: backend.batches, "a batch at the backend", **POLL)
    abandoned = asyncio.create_task(batcher.submit(sample("abandoned"), 30))
    await wait_until(lambda: batcher.queue_depth == 1, "batcher.queue_depth == 1", **POLL)

    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    backend.release.set()
    await running

    assert batcher.queue_depth == 0
    assert backend.batches == [["running"]]
    await batcher.stop()


async def test_stop_serves_queued_requests_then_refuses_new_ones_and_closes_the_backend(metrics):
    backend = FakeBackend()
    batcher = await started(backend, metrics, max_batch_size=2, max_queue_delay_ms=NEVER_MS)
    pending = [asyncio.create_task(batcher.submit(sample(f"s{i}"), 30)) for i in range(3)]
    await wait_until(
        lambda: batcher.queue_depth + sum(backend.sizes) == 3, "batcher.queue_depth + sum(backend.sizes) == 3", **POLL
    )

    await batcher.stop(timeout_s=10)

    assert [(await task)[0].text for task in pending] == ["s0", "s1", "s2"]
    assert backend.sizes == [2, 1]  # the last one did not wait for a full batch
    with pytest.raises(BatcherStoppedError):
        await batcher.submit(sample("late"), 30)
    assert (backend.starts, backend.closes) == (1, 1)
    assert not batcher.ready


async def test_stop_fails_what_it_could_not_serve_by_its_deadline(metrics):
    backend = FakeBackend()
    backend.release.clear()
    batcher = await started(backend, metrics, max_batch_size=1, max_queue_delay_ms=0)
    running = asyncio.create_task(batcher.submit(sample("running"), 30))
    await wait_until(lambda: backend.batches, "a batch at the backend", **POLL)
    queued = asyncio.create_task(batcher.submit(sample("queued"), 30))
    await wait_until(lambda: batcher.queue_depth == 1, "batcher.queue_depth == 1", **POLL)

    await batcher.stop(timeout_s=0.05)

    for task in (running, queued):
        with pytest.raises(BatcherStoppedError):
            await task
    assert failures(metrics, "shutdown") == 2
    assert backend.closes == 1


async def test_the_backend_gets_the_batch_s_deadline_the_earliest_of_its_samples(metrics):
    backend = FakeBackend()
    batcher = await started(backend, metrics, max_batch_size=2, max_queue_delay_ms=NEVER_MS)
    loop = asyncio.get_running_loop()
    before = loop.time()
    await asyncio.gather(batcher.submit(sample("late"), 30), batcher.submit(sample("soon"), 5))
    (deadline,) = backend.deadlines
    assert deadline is not None
    assert before + 5 <= deadline < before + 6  # the 5 s sample's, not the 30 s one's
    await batcher.stop()


async def test_a_sample_the_backend_could_not_judge_fails_alone_as_a_backend_error(metrics):
    backend = FakeBackend(cannot_judge={"s1"})
    batcher = await started(backend, metrics, max_batch_size=2, max_queue_delay_ms=NEVER_MS)
    good, bad = await asyncio.gather(
        batcher.submit(sample("s0"), 30), batcher.submit(sample("s1"), 30), return_exceptions=True
    )
    assert not isinstance(good, BaseException) and good[0].text == "s0"
    assert isinstance(bad, BackendError)
    assert "s1: no answer" in str(bad)
    assert failures(metrics, "backend_error") == 1
    await batcher.stop()


async def test_a_late_request_already_in_the_backend_keeps_its_result_when_asked_to(metrics):
    backend = FakeBackend()
    backend.release.clear()
    batcher = await started(backend, metrics, max_batch_size=2, max_queue_delay_ms=NEVER_MS)
    kept_ticket, dropped_ticket = batcher.enqueue(sample("kept"), 0.2), batcher.enqueue(sample("dropped"), 0.2)
    kept = asyncio.create_task(batcher.result(kept_ticket, keep_late=True))
    dropped = asyncio.create_task(batcher.result(dropped_ticket))
    await wait_until(dropped.done, "the deadline to pass while the batch is in the backend", 10, 0.001)
    assert not kept.done()
    backend.release.set()
    result, _, _ = await asyncio.wait_for(kept, 10)
    assert result.text == "kept"
    assert isinstance(dropped.exception(), InferenceTimeoutError)
    assert failures(metrics, "late_kept") == 1
    await batcher.stop()
