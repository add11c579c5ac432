"""From a wire sample to its one real verdict: deduplicate, decode, batch, judge, store, observe.

Every front (Session stream, unary Infer, MQTT bridge) goes through `IngestCore.admit`. The contract
is the one `protos/session.proto` gives the Ack:

- A sample (an edge's sample_id: the key is `(edge_id, sample_id)`, so two edges' ids never meet)
  gets at most one real verdict (origin BACKEND), stored before anyone is told of it. A resend while
  it is being judged joins that judgement; a resend after gets the stored verdict.
- Whether the batcher takes a sample is known before the Ack is sent: a full batcher defers the
  sample (code OVERLOADED, retry after), it is never accepted and then failed.
- A timeout, a backend error or a store error is not a judgement: the sample's outcome is a
  `Deferral` (code INTERNAL) and nothing is stored; the edge, which keeps the sample until its
  verdict, sends it again.

Judging runs in a task owned by the core, not by the caller, so a verdict is still made and stored
when the edge disconnects in between (its resend then finds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cloud.backends import Backend
from cloud.batcher import (
    BatcherError,
    BatcherStoppedError,
    DynamicBatcher,
    InferenceTimeoutError,
    QueueFullError,
    Ticket,
)
from cloud.convert import BadSampleError, SampleInput, verdict_to_pb
from cloud.ingest.config import IngestConfig
from cloud.ingest.decode import decode_sample
from cloud.metrics import CloudMetrics
from cloud.rules import NOT_IN_POLICY, RuleLookup, answered, with_rules
from cloud.store import SampleMeta, StoreError, VerdictStore
from common.periodic import PeriodicTask
from common.tracing import Tracing
from protos import sample_pb2, session_pb2, verdict_pb2

logger = logging.getLogger(__name__)

VerdictObserver = Callable[[SampleInput, verdict_pb2.Verdict], None]
DeferReason = Literal["overloaded", "timeout", "backend_error", "store_error", "shutting_down", "claim_lapsed"]

_CODES: dict[DeferReason, session_pb2.SessionErrorCode.ValueType] = {
    "overloaded": session_pb2.SESSION_ERROR_CODE_OVERLOADED,
    "timeout": session_pb2.SESSION_ERROR_CODE_INTERNAL,
    "backend_error": session_pb2.SESSION_ERROR_CODE_INTERNAL,
    "store_error": session_pb2.SESSION_ERROR_CODE_INTERNAL,
    "shutting_down": session_pb2.SESSION_ERROR_CODE_SHUTTING_DOWN,
    "claim_lapsed": session_pb2.SESSION_ERROR_CODE_INTERNAL,
}
# Fallbacks an older version stored as verdicts; never a judgement, so a resend is judged.
_FALLBACK_ORIGINS = frozenset({verdict_pb2.VERDICT_ORIGIN_TIMEOUT, verdict_pb2.VERDICT_ORIGIN_BACKEND_ERROR})


@dataclass(frozen=True, slots=True)
class Deferral:
    """The sample was not judged now; the edge keeps it and sends it again after `retry_after_s`."""

    sample_id: str
    reason: DeferReason
    retry_after_s: float
    detail: str

    def ack(self) -> session_pb2.Ack:
        """The Ack that tells the edge so."""
        return session_pb2.Ack(
            sample_id=self.sample_id,
            accepted=False,
            error=self.detail,
            code=_CODES[self.reason],
            retry_after_ms=self.retry_after_s * 1000,
        )


Outcome = verdict_pb2.Verdict | Deferral


@dataclass(eq=False)
class _Pending:
    """A sample being admitted or judged: its ack once known, its outcome once made."""

    ack: asyncio.Future[session_pb2.Ack]
    outcome: asyncio.Future[Outcome]


@dataclass(frozen=True, slots=True)
class Admission:
    """What to answer a sample with: the Ack now and, when accepted, the outcome to wait for."""

    ack: session_pb2.Ack
    outcome: asyncio.Future[Outcome] | None


SampleKey = tuple[str, str]  # (edge_id, sample_id)


class IngestCore:
    """Admits samples and judges each sample (edge_id, sample_id) to one stored verdict."""

    def __init__(
        self,
        store: VerdictStore,
        batcher: DynamicBatcher,
        backend: Backend,
        metrics: CloudMetrics,
        config: IngestConfig | None = None,
        replica: str = "",
        tracing: Tracing | None = None,
        rules: RuleLookup | None = None,
    ) -> None:
        """Judge with `batcher` (in front of `backend`), keep verdicts in `store`; `replica` names this service
        in the claims it takes on a shared store (default: host name, process id and a random part); `rules`
        gives an edge's watch rules, which samples name by id (`cloud.rules`; without it none is known)."""
        self._rules = rules
        self._replica = replica or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._tracing = tracing or Tracing()
        self._store = store
        self._batcher = batcher
        self._backend = backend
        self._metrics = metrics
        self._config = config or IngestConfig()
        self._observers: list[VerdictObserver] = []
        self._pending: dict[SampleKey, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._decoding = asyncio.Semaphore(self._config.max_concurrent_decodes)
        lease = self._config.claim_lease_s
        # On a store replicas share: this replica's claims stay alive while it judges (every third of the
        # lease), so a judgement may outlast the lease and a dead replica's claims lapse within it.
        self._renewal = PeriodicTask(
            "claim-renewal",
            lambda: self._store.renew_claims(self._replica, lease),
            lease / 3,
            failures=metrics.task_failures.labels("claim-renewal"),
            log=logger,
        )

    def start(self) -> None:
        """Start renewing this replica's claims, on a store replicas share."""
        if self._store.shared:
            self._renewal.start()

    @property
    def judging(self) -> int:
        """Samples accepted whose outcome is not made yet."""
        return len(self._tasks)

    def add_observer(self, observer: VerdictObserver) -> None:
        """Hand every stored backend verdict, with its sample, to `observer` (e.g. the closed loop)."""
        self._observers.append(observer)

    async def admit(
        self, pb: sample_pb2.Sample, timeout_s: float | None = None, transport: str = "grpc", keep_late: bool = True
    ) -> Admission:
        """The Ack for a sample, and (accepted) its judgement started within `timeout_s` (default the batcher's).

        `keep_late` (the streaming fronts): a sample whose deadline passes while the backend judges it
        keeps that judgement rather than being deferred and judged again; a unary caller waiting on
        its own deadline passes False.
        """
        self._metrics.samples_received.labels(transport).inc()
        self._metrics.uplink_bytes.inc(pb.ByteSize())
        sample_id = pb.sample_id
        if not sample_id:
            return self._refuse(BadSampleError("", "malformed", "sample_id is empty; every sample needs one"))
        key = (pb.edge_id, sample_id)
        pending = self._pending.get(key)
        if pending is not None:
            return await self._join(pending, sample_id)
        loop = asyncio.get_running_loop()
        # Registered before the first await, so a resend arriving meanwhile joins this one.
        pending = _Pending(loop.create_future(), loop.create_future())
        self._pending[key] = pending
        try:
            admission = await self._admit_new(pb, pending, timeout_s, keep_late)
        except BaseException as err:
            self._pending.pop(key, None)
            _fail(pending, err)
            raise
        if admission.outcome is None or admission.ack.duplicate:
            self._pending.pop(key, None)
        pending.ack.set_result(admission.ack)
        return admission

    async def _admit_new(
        self, pb: sample_pb2.Sample, pending: _Pending, timeout_s: float | None, keep_late: bool
    ) -> Admission:
        if self._store.shared:
            claimed = await self._claimed(pb, pending)
            if claimed is not None:
                return claimed
        else:
            stored = await self._stored_verdict(pb.sample_id, pb.edge_id)
            if stored is not None:
                pending.outcome.set_result(stored)
                self._metrics.samples_duplicate.inc()
                return Admission(_accepted(pb.sample_id, duplicate=True), pending.outcome)
        admission = await self._judge_new(pb, pending, timeout_s, keep_late)
        if admission.outcome is None and self._store.shared:
            await self._release(pb.sample_id, pb.edge_id)  # refused or deferred: a resend is judged at once, anywhere
        return admission

    async def _claimed(self, pb: sample_pb2.Sample, pending: _Pending) -> Admission | None:
        """On a store replicas share: None when this replica now holds the sample's claim (judge it), else the
        answer: its stored verdict, or the verdict another replica is making."""
        try:
            claim = await self._store.claim(pb.sample_id, pb.edge_id, self._replica, self._config.claim_lease_s)
        except StoreError:
            logger.exception("sample %s: store claim failed; judging it", pb.sample_id)
            return None
        if claim.state == "mine":
            return None
        self._metrics.samples_duplicate.inc()
        if claim.state == "judged" and claim.verdict is not None:
            pending.outcome.set_result(verdict_pb2.Verdict.FromString(claim.verdict))
        else:
            self._metrics.samples_judged_elsewhere.inc()
            task = asyncio.create_task(self._await_elsewhere(pb, pending), name=f"elsewhere-{pb.sample_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return Admission(_accepted(pb.sample_id, duplicate=True), pending.outcome)

    async def _await_elsewhere(self, pb: sample_pb2.Sample, pending: _Pending) -> None:
        """Another replica judges this sample: its verdict when stored, or (its claim lapsed) a resend."""
        outcome: Outcome
        try:
            while True:
                await asyncio.sleep(self._config.claim_poll_s)
                claim = await self._store.claim(pb.sample_id, pb.edge_id, self._replica, self._config.claim_lease_s)
                if claim.state == "judged" and claim.verdict is not None:
                    outcome = verdict_pb2.Verdict.FromString(claim.verdict)
                    break
                if claim.state == "mine":  # the other replica died or gave up: the edge sends it again
                    await self._release(pb.sample_id, pb.edge_id)
                    outcome = self._lapsed(pb.sample_id)
                    break
        except StoreError as err:
            outcome = self._defer(pb.sample_id, err)
        except BaseException as err:
            _fail(pending, err)
            raise
        finally:
            if self._pending.get((pb.edge_id, pb.sample_id)) is pending:
                del self._pending[(pb.edge_id, pb.sample_id)]
        pending.outcome.set_result(outcome)

    def _lapsed(self, sample_id: str) -> Deferral:
        self._metrics.samples_deferred.labels("claim_lapsed").inc()
        after = self._config.shutting_down_retry_after_s
        detail = f"sample {sample_id}: the replica judging it stopped before its verdict; send it again"
        logger.warning("sample %s deferred (claim_lapsed): another replica's claim lapsed", sample_id)
        return Deferral(sample_id, "claim_lapsed", after, detail)

    async def _release(self, sample_id: str, edge_id: str) -> None:
        try:
            await self._store.release(sample_id, edge_id, self._replica)
        except StoreError:
            logger.warning("sample %s: its claim could not be released (it lapses by itself)", sample_id)

    async def _judge_new(
        self, pb: sample_pb2.Sample, pending: _Pending, timeout_s: float | None, keep_late: bool
    ) -> Admission:
        """Decode, enqueue and judge a sample nobody has judged."""
        admitted_ns = time.time_ns()
        try:
            # Decoding and the dashboard's thumbnail both off the loop, a bounded number at once.
            async with self._decoding:
                sample, meta = await asyncio.get_running_loop().run_in_executor(None, decode_sample, pb)
        except BadSampleError as err:
            return self._refuse(err)
        sample, unknown = with_rules(sample, self._rules)
        if unknown:
            logger.info(
                "sample %s asks watch rules %s, which the policy for edge %s camera %s does not have: answered unsure",
                sample.sample_id,
                ", ".join(unknown),
                sample.edge_id,
                sample.camera_id,
            )
        try:
            ticket = self._batcher.enqueue(sample, timeout_s)
        except BatcherError as err:
            deferral = self._defer(sample.sample_id, err)
            return Admission(deferral.ack(), None)
        task = asyncio.create_task(
            self._judge(sample, meta, ticket, pending, keep_late, admitted_ns), name=f"judge-{sample.sample_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Admission(_accepted(sample.sample_id), pending.outcome)

    async def _stored_verdict(self, sample_id: str, edge_id: str) -> verdict_pb2.Verdict | None:
        try:
            stored = await self._store.get(sample_id, edge_id)
        except StoreError:
            # Not knowing is not a reason to refuse: judged again, the store keeps the first verdict.
            logger.exception("sample %s: store lookup failed; judging it", sample_id)
            return None
        if stored is None:
            return None
        verdict = verdict_pb2.Verdict.FromString(stored)
        return None if verdict.origin in _FALLBACK_ORIGINS else verdict

    async def _join(self, pending: _Pending, sample_id: str) -> Admission:
        """A resend of a sample still being admitted or judged: same outcome, no second judgement."""
        first = await asyncio.shield(pending.ack)
        self._metrics.samples_duplicate.inc()
        if not first.accepted:
            return Admission(first, None)
        return Admission(_accepted(sample_id, duplicate=True), pending.outcome)

    def _refuse(self, err: BadSampleError) -> Admission:
        self._metrics.bad_messages.labels(err.reason).inc()
        logger.info("sample refused: %s", err)
        ack = session_pb2.Ack(
            sample_id=err.sample_id, accepted=False, error=str(err), code=session_pb2.SESSION_ERROR_CODE_INVALID_MESSAGE
        )
        return Admission(ack, None)

    def _defer(self, sample_id: str, err: BatcherError | StoreError) -> Deferral:
        config = self._config
        reason: DeferReason
        if isinstance(err, QueueFullError):
            reason, after = "overloaded", config.overloaded_retry_after_s
        elif isinstance(err, BatcherStoppedError):
            reason, after = "shutting_down", config.shutting_down_retry_after_s
        elif isinstance(err, InferenceTimeoutError):
            reason, after = "timeout", config.failed_retry_after_s
        elif isinstance(err, StoreError):
            reason, after = "store_error", config.failed_retry_after_s
        else:
            reason, after = "backend_error", config.failed_retry_after_s
        self._metrics.samples_deferred.labels(reason).inc()
        logger.warning("sample %s deferred (%s): %s", sample_id, reason, err)
        return Deferral(sample_id, reason, after, f"sample {sample_id} not judged ({reason}): {err}; send it again")

    async def _judge(
        self,
        sample: SampleInput,
        meta: SampleMeta,
        ticket: Ticket,
        pending: _Pending,
        keep_late: bool,
        admitted_ns: int,
    ) -> None:
        try:
            pending.outcome.set_result(await self._outcome(sample, meta, ticket, keep_late, admitted_ns))
        except BaseException as err:
            _fail(pending, err)
            raise
        finally:
            self._pending.pop((sample.edge_id, sample.sample_id), None)

    async def _outcome(
        self, sample: SampleInput, meta: SampleMeta, ticket: Ticket, keep_late: bool, admitted_ns: int
    ) -> Outcome:
        backend = self._backend
        try:
            result, queue_ms, inference_ms = await self._batcher.result(ticket, keep_late)
        except BatcherError as err:
            if self._store.shared:
                await self._release(sample.sample_id, sample.edge_id)
            return self._defer(sample.sample_id, err)
        result = answered(sample, result, backend.name)
        for answer in result.rule_answers:
            kind = "not_in_policy" if answer.reason == NOT_IN_POLICY else answer.match
            self._metrics.rule_answers.labels(kind).inc()
        verdict = verdict_to_pb(
            sample,
            result,
            backend=backend.name,
            model_name=backend.model_name,
            model_version=backend.model_version,
            queue_ms=queue_ms,
            inference_ms=inference_ms,
        )
        put_ns = time.time_ns()
        try:
            stored = await self._store.put(sample.sample_id, sample.edge_id, verdict.SerializeToString(), meta=meta)
        except StoreError as err:
            # Not durable, so not sent: a verdict the cloud could not answer a resend with again.
            return self._defer(sample.sample_id, err)
        if self._tracing.enabled:
            self._trace(sample, verdict, admitted_ns, put_ns, queue_ms, inference_ms)
        if not stored:  # another replica's verdict got there first: that one is the sample's verdict
            kept = await self._stored_verdict(sample.sample_id, sample.edge_id)
            if kept is not None:
                return kept
        for observer in self._observers:
            observer(sample, verdict)
        return verdict

    def _trace(
        self,
        sample: SampleInput,
        verdict: verdict_pb2.Verdict,
        admitted_ns: int,
        put_ns: int,
        queue_ms: float,
        inference_ms: float,
    ) -> None:
        """The cloud's spans of a judged sample: judge, and under it queue, backend and store (common/tracing.py).

        The batcher reports queue and inference milliseconds once the result is in; the backend's span
        ends where the store write begins, and the queue's where the backend's begins.
        """
        done_ns = time.time_ns()
        attributes = {
            "edgeglm.sample_id": sample.sample_id,
            "edgeglm.edge_id": sample.edge_id,
            "edgeglm.camera_id": sample.camera_id,
            "edgeglm.track_id": sample.track_id,
            "edgeglm.mined_reason": sample.mined_reason,
            "edgeglm.decision": decision_label(verdict),
            "edgeglm.backend": self._backend.name,
        }
        judge = self._tracing.span(sample.trace_id, "cloud.judge", admitted_ns, done_ns, attributes)
        backend_ns = max(admitted_ns, put_ns - round(inference_ms * 1e6))
        queue_ns = max(admitted_ns, backend_ns - round(queue_ms * 1e6))
        self._tracing.span(sample.trace_id, "cloud.queue", queue_ns, backend_ns, {}, parent=judge)
        self._tracing.span(sample.trace_id, "cloud.backend", backend_ns, put_ns, {}, parent=judge)
        self._tracing.span(sample.trace_id, "cloud.store", put_ns, done_ns, {}, parent=judge)

    async def drain(self, deadline: float) -> int:
        """Wait for the judgements under way until `deadline` (monotonic); returns how many were cut."""
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        await self._renewal.stop()  # what is left is cut: its claims lapse (or are released below)
        left = list(self._tasks)
        for task in left:
            task.cancel()
        for task in left:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return len(left)


def decision_label(verdict: verdict_pb2.Verdict) -> str:
    """The verdicts_sent label of a verdict's decision."""
    return verdict_pb2.Decision.Name(verdict.decision).removeprefix("DECISION_").lower()


def _accepted(sample_id: str, duplicate: bool = False) -> session_pb2.Ack:
    return session_pb2.Ack(sample_id=sample_id, accepted=True, duplicate=duplicate)


def _fail(pending: _Pending, err: BaseException) -> None:
    """Wake whoever waits on a pending sample that will not get its ack or outcome."""
    error = err if isinstance(err, Exception) else RuntimeError(f"judging stopped ({type(err).__name__})")
    for future in (pending.ack, pending.outcome):
        if not future.done():
            future.set_exception(error)
            future.exception()  # marked retrieved: nobody may be waiting
