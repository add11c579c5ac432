"""Dynamic batching in front of one backend, with Triton's semantics.

Requests wait in one bounded FIFO queue; a full queue refuses a new request at once (QueueFullError)
so that callers back off instead of piling up. A batch leaves as soon as `max_batch_size` requests
wait, or when the *oldest* waiting request has waited `max_queue_delay_ms`, whichever comes first.
Each request carries one deadline for queue plus inference: a request whose deadline passes while
queued is failed with InferenceTimeoutError and never inferred; one whose deadline passes while its
batch runs is failed the same way and its result dropped. A backend exception on a batch has each of
its requests judged again alone (one bad sample costs the others nothing but time); a request that
fails alone fails with BackendError, and the batcher goes on serving.

One backend call runs at a time: a GPU runs one batch at a time anyway, and while it does, the next
batch fills up in the queue, which is what makes batches grow under load. Scaling past one model
instance means more replicas (or the `openai` backend in front of a serving cluster), not parallel
calls here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cloud.backends.protocol import Backend
from cloud.batcher.config import BatcherConfig
from cloud.batcher.errors import (
    BackendError,
    BatcherError,
    BatcherStoppedError,
    InferenceTimeoutError,
    QueueFullError,
)
from cloud.convert import BackendResult, SampleFailure, SampleInput
from cloud.metrics import CloudMetrics

logger = logging.getLogger(__name__)

Reply = tuple[BackendResult, float, float]  # result, queue ms, inference ms
State = Literal["new", "running", "stopping", "stopped"]


@dataclass(eq=False)
class _Request:
    sample: SampleInput
    enqueued_at: float  # loop time
    deadline: float  # loop time
    future: asyncio.Future[Reply]


@dataclass(frozen=True, eq=False)
class Ticket:
    """A request in the batcher's queue, to wait on with `DynamicBatcher.result`."""

    request: _Request

    @property
    def deadline(self) -> float:
        """The request's deadline (loop time)."""
        return self.request.deadline


class DynamicBatcher:
    """Collects single requests into batches for a backend; one backend call at a time."""

    def __init__(self, backend: Backend, config: BatcherConfig, metrics: CloudMetrics) -> None:
        """The batcher owns `backend`: `start` starts it and `stop` closes it."""
        self._backend = backend
        self._config = config
        self._metrics = metrics
        self._label = backend.name
        self._batch_limit = min(config.max_batch_size, backend.max_batch_size)
        self._queue: deque[_Request] = deque()
        self._in_flight: list[_Request] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._state: State = "new"
        # Called once if scheduling dies of a bug: the service cannot judge any more and must say so.
        self.on_failure: Callable[[BaseException], None] | None = None

    @property
    def ready(self) -> bool:
        """True once the backend is started and requests are accepted, until `stop`."""
        return self._state == "running"

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not counting the batch running)."""
        return len(self._queue)

    @property
    def batch_limit(self) -> int:
        """The largest batch sent: the smaller of the config's and the backend's max_batch_size."""
        return self._batch_limit

    async def start(self) -> None:
        """Start the backend (loading its model) and the scheduling task; again is a no-op."""
        if self._state != "new":
            return
        await self._backend.start()
        self._task = asyncio.create_task(self._serve(), name=f"batcher-{self._label}")
        self._task.add_done_callback(self._served)
        self._state = "running"

    async def submit(self, sample: SampleInput, timeout_s: float | None = None) -> Reply:
        """Queue `sample` and wait for its result: (result, queue ms, inference ms).

        `timeout_s` bounds queue plus inference (default: the config's default_timeout_ms). Raises
        QueueFullError, InferenceTimeoutError, BackendError or BatcherStoppedError.
        """
        return await self.result(self.enqueue(sample, timeout_s))

    def enqueue(self, sample: SampleInput, timeout_s: float | None = None) -> Ticket:
        """Queue `sample` now, or raise at once (QueueFullError, BatcherStoppedError, InferenceTimeoutError).

        Synchronous, so that a caller learns before it promises anything whether the sample is taken:
        the ingest core defers an edge's sample on QueueFullError instead of accepting it.
        """
        if self._state != "running":
            raise self._count(BatcherStoppedError(f"{self._label} batcher is {self._state}: not accepting requests"))
        if len(self._queue) >= self._config.max_queue_size:
            raise self._count(
                QueueFullError(
                    f"{self._label} batcher: queue full ({len(self._queue)} requests waiting, "
                    f"max_queue_size {self._config.max_queue_size}); retry later"
                )
            )
        timeout = self._config.default_timeout_ms / 1000 if timeout_s is None else timeout_s
        if timeout <= 0:
            raise self._count(InferenceTimeoutError(f"sample {sample.sample_id}: no time left ({timeout:.3f} s)"))
        loop = asyncio.get_running_loop()
        now = loop.time()
        request = _Request(sample, now, now + timeout, loop.create_future())
        self._queue.append(request)
        self._metrics.queue_depth.set(len(self._queue))
        self._wake.set()
        return Ticket(request)

    async def result(self, ticket: Ticket, keep_late: bool = False) -> Reply:
        """Wait for a queued request's result until its deadline; cancelling withdraws it from the queue.

        `keep_late`: a request whose deadline passes while its batch is already in the backend waits
        for that batch instead of failing (its result is a real judgement, worth more to a caller
        that would otherwise ask again than a timeout); a request still queued fails as ever.
        """
        request = ticket.request
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), max(0.0, request.deadline - loop.time()))
        except TimeoutError:
            if keep_late and request in self._in_flight:
                self._metrics.request_failure.labels(self._label, "late_kept").inc()
                return await asyncio.shield(request.future)
            self._fail(request, InferenceTimeoutError(self._timeout_message(request, loop.time())))
            # The result may have landed in the same instant; result() returns it or raises the error.
            return request.future.result()
        except asyncio.CancelledError:
            # The caller went away: the request must not be inferred for nobody.
            self._withdraw(request)
            if not request.future.done():
                request.future.cancel()
                self._metrics.request_failure.labels(self._label, "cancelled").inc()
            raise

    @property
    def room(self) -> int:
        """Requests the queue takes before it refuses (0 when not running)."""
        return max(0, self._config.max_queue_size - len(self._queue)) if self._state == "running" else 0

    async def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new requests, serve the queued ones for up to `timeout_s`, fail the rest, close the backend."""
        if self._state in ("stopping", "stopped"):
            return
        was_running = self._state == "running"
        self._state = "stopping"
        self._wake.set()
        task = self._task
        if was_running and task is not None:
            timeout = self._config.stop_timeout_s if timeout_s is None else timeout_s
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                left = [*self._in_flight, *self._queue]
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                for request in left:
                    self._fail(request, BatcherStoppedError(f"sample {request.sample.sample_id}: batcher stopped"))
                logger.warning(
                    "%s batcher stopped after %.1f s with %d requests unserved", self._label, timeout, len(left)
                )
        self._state = "stopped"
        await self._backend.close()

    def _served(self, task: asyncio.Task[None]) -> None:
        """If scheduling ever dies of a bug, say so and fail what waits rather than leave it to time out."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        logger.error("%s batcher: scheduling failed", self._label, exc_info=error)
        self._state = "stopped"
        for request in [*self._in_flight, *self._queue]:
            self._fail(request, BatcherStoppedError(f"sample {request.sample.sample_id}: batcher failed"))
        if self.on_failure is not None and error is not None:
            self.on_failure(error)

    async def _serve(self) -> None:
        """Form batches and run them, one at a time, until stopping and the queue is empty."""
        loop = asyncio.get_running_loop()
        delay = self._config.max_queue_delay_ms / 1000
        while True:
            if not self._queue:
                if self._state != "running":
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._queue[0].enqueued_at + delay - loop.time()
            if len(self._queue) < self._batch_limit and wait > 0 and self._state == "running":
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # asyncio.timeout: wait_for may swallow a cancel on 3.11
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            batch = self._take_batch(loop.time())
            if batch:
                await self._execute(batch, loop)

    def _take_batch(self, now: float) -> list[_Request]:
        """Up to batch_limit requests from the head; any whose deadline passed is failed, not inferred."""
        batch: list[_Request] = []
        while self._queue and len(batch) < self._batch_limit:
            request = self._queue.popleft()
            if request.future.done():
                continue
            if request.deadline <= now:
                self._fail(request, InferenceTimeoutError(self._timeout_message(request, now)))
                continue
            batch.append(request)
        self._metrics.queue_depth.set(len(self._queue))
        return batch

    async def _execute(self, batch: list[_Request], loop: asyncio.AbstractEventLoop) -> None:
        started = loop.time()
        for request in batch:
            self._metrics.queue_duration.labels(self._label).observe(started - request.enqueued_at)
        self._in_flight = batch
        try:
            deadline = min(request.deadline for request in batch)  # the batch is due when its first sample is
            results = await self._backend.infer([request.sample for request in batch], deadline)
            if len(results) != len(batch):
                raise ValueError(f"returned {len(results)} results for a batch of {len(batch)}")
        except Exception as exc:  # any backend failure fails its batch, never the batcher
            self._in_flight = []
            if len(batch) > 1:
                # One bad sample must not cost the others their verdicts: each is judged again alone,
                # and only those that fail alone fail.
                logger.warning(
                    "%s backend failed on a batch of %d (%s): judging each sample alone", self._label, len(batch), exc
                )
                for request in batch:
                    if not request.future.done():
                        await self._execute([request], loop)
                return
            logger.error(
                "%s backend failed on sample %s: %s", self._label, batch[0].sample.sample_id, exc, exc_info=exc
            )
            self._fail(batch[0], BackendError(f"{self._label} backend failed on this sample: {exc}"))
            return
        finally:
            self._in_flight = []
        finished = loop.time()
        infer_ms = (finished - started) * 1000
        metrics = self._metrics
        metrics.compute_duration.labels(self._label).observe(finished - started)
        metrics.batch_size.labels(self._label).observe(len(batch))
        metrics.exec_count.labels(self._label).inc()
        for request, result in zip(batch, results, strict=True):
            if request.future.done():  # timed out or cancelled while the batch ran
                continue
            if isinstance(result, SampleFailure):
                self._fail(request, BackendError(f"{self._label} backend could not judge it: {result.text}"))
                continue
            request.future.set_result((result, (started - request.enqueued_at) * 1000, infer_ms))
            metrics.request_success.labels(self._label).inc()

    def _fail(self, request: _Request, error: BatcherError) -> None:
        """Fail a request once (later attempts are ignored), counting it; it leaves the queue if it was there."""
        if request.future.done():
            return
        self._withdraw(request)
        request.future.set_exception(error)
        self._count(error)

    def _withdraw(self, request: _Request) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(request)
            self._metrics.queue_depth.set(len(self._queue))

    def _count(self, error: BatcherError) -> BatcherError:
        self._metrics.request_failure.labels(self._label, error.reason).inc()
        return error

    def _timeout_message(self, request: _Request, now: float) -> str:
        where = "in the backend" if request in self._in_flight else "queued, not inferred"
        waited = now - request.enqueued_at
        return f"sample {request.sample.sample_id}: deadline passed after {waited:.3f} s ({where})"
