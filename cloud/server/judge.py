"""From a wire sample to its verdict, once: deduplicate, decode, batch, store.

Both the Session stream and the unary Infer go through `SampleJudge.admit`. A sample_id is judged at
most once: a resend while the first is still being judged waits for that judgement, a resend after
it gets the stored verdict. Judging runs in a task owned by the judge, not by the caller, so a
verdict is still made and stored when the edge disconnects in between (its resend then finds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Literal

from cloud.backends import Backend
from cloud.batcher import BatcherError, DynamicBatcher, InferenceTimeoutError
from cloud.convert import BadSampleError, SampleInput, fallback_verdict, verdict_to_pb
from cloud.metrics import CloudMetrics
from cloud.policy import PolicyEngine
from cloud.server.sample_meta import decode_sample
from cloud.store import SampleMeta, StoreError, VerdictStore
from protos import sample_pb2, session_pb2, verdict_pb2

logger = logging.getLogger(__name__)
TRANSPORT = "grpc"


@dataclass(eq=False)
class _Pending:
    """A sample being admitted or judged: its ack once known, its verdict once made."""

    ack: asyncio.Future[session_pb2.Ack]
    verdict: asyncio.Future[verdict_pb2.Verdict]


@dataclass(frozen=True, slots=True)
class Admission:
    """What to answer a sample with: the ack now, and (when accepted) the verdict to wait for."""

    ack: session_pb2.Ack
    verdict: asyncio.Future[verdict_pb2.Verdict] | None


class SampleJudge:
    """Admits samples and judges each sample_id once."""

    def __init__(
        self,
        store: VerdictStore,
        batcher: DynamicBatcher,
        backend: Backend,
        policy: PolicyEngine,
        metrics: CloudMetrics,
    ) -> None:
        """Judge with `batcher` (in front of `backend`), remember verdicts in `store`."""
        self._store = store
        self._batcher = batcher
        self._backend = backend
        self._policy = policy
        self._metrics = metrics
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def judging(self) -> int:
        """Samples accepted whose verdict is not made yet."""
        return len(self._tasks)

    async def admit(
        self, pb: sample_pb2.Sample, timeout_s: float | None = None, transport: str = TRANSPORT
    ) -> Admission:
        """Ack a sample and start judging it (within `timeout_s`, default the batcher's) unless known already."""
        self._metrics.samples_received.labels(transport).inc()
        self._metrics.uplink_bytes.inc(pb.ByteSize())
        sample_id = pb.sample_id
        if not sample_id:
            return self._refuse(BadSampleError("", "malformed", "sample_id is empty; every sample needs one"))
        pending = self._pending.get(sample_id)
        if pending is not None:
            return await self._join(pending, sample_id)
        loop = asyncio.get_running_loop()
        # Registered before the first await, so a resend arriving meanwhile joins this one.
        pending = _Pending(loop.create_future(), loop.create_future())
        self._pending[sample_id] = pending
        try:
            admission = await self._admit_new(pb, pending, timeout_s)
        except BaseException as err:
            self._pending.pop(sample_id, None)
            _fail(pending, err)
            raise
        if admission.verdict is None or admission.ack.duplicate:
            self._pending.pop(sample_id, None)
        pending.ack.set_result(admission.ack)
        return admission

    async def _admit_new(self, pb: sample_pb2.Sample, pending: _Pending, timeout_s: float | None) -> Admission:
        stored = await self._store.get(pb.sample_id)
        if stored is not None:
            verdict = verdict_pb2.Verdict.FromString(stored)
            # A fallback (timeout, backend error: e.g. cut by a shutdown) was never a judgement: a resend
            # is judged now. Anything the backend decided is answered from the store.
            if verdict.origin not in _FALLBACK_ORIGINS:
                pending.verdict.set_result(verdict)
                self._metrics.samples_duplicate.inc()
                return Admission(_ack(pb.sample_id, duplicate=True), pending.verdict)
        try:
            # Decoding and the dashboard's thumbnail both off the loop.
            sample, meta = await asyncio.get_running_loop().run_in_executor(None, decode_sample, pb)
        except BadSampleError as err:
            return self._refuse(err)
        await self._store.record_received(sample.sample_id, sample.edge_id)
        task = asyncio.create_task(self._judge(sample, meta, pending, timeout_s), name=f"judge-{sample.sample_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Admission(_ack(sample.sample_id), pending.verdict)

    async def _join(self, pending: _Pending, sample_id: str) -> Admission:
        """A resend of a sample still being admitted or judged: same outcome, no second judgement."""
        first = await asyncio.shield(pending.ack)
        self._metrics.samples_duplicate.inc()
        if not first.accepted:
            return Admission(first, None)
        return Admission(_ack(sample_id, duplicate=True), pending.verdict)

    def _refuse(self, err: BadSampleError) -> Admission:
        self._metrics.bad_messages.labels(err.reason).inc()
        logger.info("sample refused: %s", err)
        return Admission(session_pb2.Ack(sample_id=err.sample_id, accepted=False, error=str(err)), None)

    async def _judge(self, sample: SampleInput, meta: SampleMeta, pending: _Pending, timeout_s: float | None) -> None:
        try:
            verdict = await self._verdict(sample, timeout_s)
            try:
                await self._store.put(sample.sample_id, sample.edge_id, verdict.SerializeToString(), meta=meta)
            except StoreError:
                # The verdict still goes out; only a later resend would be judged again.
                logger.exception("verdict of %s not stored", sample.sample_id)
            if verdict.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND:
                self._policy.observe(sample, verdict)
            pending.verdict.set_result(verdict)
        except BaseException as err:
            _fail(pending, err)
            raise
        finally:
            self._pending.pop(sample.sample_id, None)

    async def _verdict(self, sample: SampleInput, timeout_s: float | None) -> verdict_pb2.Verdict:
        backend = self._backend
        name, model_name, model_version = backend.name, backend.model_name, backend.model_version
        try:
            result, queue_ms, inference_ms = await self._batcher.submit(sample, timeout_s)
        except InferenceTimeoutError as err:
            logger.warning("sample %s: %s", sample.sample_id, err)
            origin: Literal["timeout", "backend_error"] = "timeout"
            detail = str(err)
        except BatcherError as err:
            logger.warning("sample %s: %s", sample.sample_id, err)
            origin, detail = "backend_error", f"{err.reason}: {err}"
        else:
            return verdict_to_pb(
                sample,
                result,
                backend=name,
                model_name=model_name,
                model_version=model_version,
                queue_ms=queue_ms,
                inference_ms=inference_ms,
            )
        return fallback_verdict(
            sample.sample_id,
            sample.edge_id,
            sample.trace_id,
            origin=origin,
            detail=detail,
            backend=name,
            model_name=model_name,
            model_version=model_version,
        )

    async def drain(self, deadline: float) -> int:
        """Wait for the verdicts being made until `deadline` (monotonic); returns how many were left."""
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        left = list(self._tasks)
        for task in left:
            task.cancel()
        for task in left:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return len(left)


_FALLBACK_ORIGINS = frozenset({verdict_pb2.VERDICT_ORIGIN_TIMEOUT, verdict_pb2.VERDICT_ORIGIN_BACKEND_ERROR})


def _ack(sample_id: str, duplicate: bool = False) -> session_pb2.Ack:
    return session_pb2.Ack(sample_id=sample_id, accepted=True, duplicate=duplicate)


def _fail(pending: _Pending, err: BaseException) -> None:
    """Wake whoever waits on a pending sample that will not get its ack or verdict."""
    error = err if isinstance(err, Exception) else RuntimeError(f"judging stopped ({type(err).__name__})")
    for future in (pending.ack, pending.verdict):
        if not future.done():
            future.set_exception(error)
            future.exception()  # marked retrieved: nobody may be waiting
