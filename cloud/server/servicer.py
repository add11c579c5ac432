"""The `edgeglm.v1.EdgeGLM` service: Session streams, unary Infer and GetPolicy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from cloud.convert import fallback_verdict
from cloud.ingest import Deferral, decision_label
from cloud.models.serve import ServeRefusedError, model_pieces
from cloud.policy import PolicyChange
from cloud.server.session import EdgeSession, SessionDeps
from cloud.server.wire import Undecodable
from protos import policy_pb2, sample_pb2, session_pb2, session_pb2_grpc, verdict_pb2

logger = logging.getLogger(__name__)
# Share of an Infer call's remaining gRPC deadline given to the batcher, so that a TIMEOUT verdict
# still reaches the caller before its deadline ends the call.
DEADLINE_SHARE = 0.9

Context = grpc.aio.ServicerContext[object, object]
# A sample Infer could not take: the gRPC status that tells a unary caller the same as the Ack's code.
_UNARY_STATUS = {
    session_pb2.SESSION_ERROR_CODE_OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    session_pb2.SESSION_ERROR_CODE_SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    session_pb2.SESSION_ERROR_CODE_INTERNAL: grpc.StatusCode.UNAVAILABLE,
}


class EdgeGLMServicer(session_pb2_grpc.EdgeGLMServicer):
    """Serves the edges; pushes policy changes to the sessions they concern."""

    def __init__(self, deps: SessionDeps) -> None:
        """Serve with the shared ingest core, policy engine, fleet status and metrics."""
        self._deps = deps
        self._sessions: set[EdgeSession] = set()
        self._stopping = False
        self._all_closed = asyncio.Event()
        deps.policy.subscribe(self._on_policy_change)

    @property
    def sessions(self) -> int:
        """Session streams open."""
        return len(self._sessions)

    async def Session(  # noqa: N802  (the gRPC method's name)
        self, request_iterator: AsyncIterator[session_pb2.EdgeMessage], context: Context
    ) -> AsyncIterator[session_pb2.CloudMessage]:
        """One edge's stream: see `EdgeSession`."""
        session = EdgeSession(self._deps, context.peer(), context.auth_context())
        self._sessions.add(session)
        self._all_closed.clear()
        if self._stopping:
            session.stop()
        runner = asyncio.create_task(session.run(request_iterator), name=f"session-{context.peer()}")
        try:
            while (message := await session.next_message()) is not None:
                yield message
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            self._sessions.discard(session)
            session.closed()
            if not self._sessions:
                self._all_closed.set()
        if session.status is not None:
            code, details = session.status
            context.set_code(code)
            context.set_details(details)

    async def Infer(  # noqa: N802
        self, request: session_pb2.InferRequest, context: Context
    ) -> verdict_pb2.Verdict:
        """Judge one sample and return its verdict (the stored one for a sample_id judged before)."""
        await self._refuse_undecodable(request, context)
        sample = request.sample
        if self._stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cloud is shutting down; retry on another replica")
        await self._check_edge(sample.edge_id, context)
        timeout = self._timeout_s(request.timeout_ms, context.time_remaining())
        admission = await self._deps.ingest.admit(sample, timeout, keep_late=False)
        if admission.outcome is None:
            await context.abort(
                _UNARY_STATUS.get(admission.ack.code, grpc.StatusCode.INVALID_ARGUMENT), admission.ack.error
            )
            raise AssertionError("abort returns only by raising")
        remaining = context.time_remaining()
        try:
            outcome = await asyncio.wait_for(asyncio.shield(admission.outcome), remaining)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"sample {sample.sample_id}: no verdict in time")
            raise
        verdict = outcome if not isinstance(outcome, Deferral) else self._fallback(sample, outcome)
        self._deps.metrics.verdicts_sent.labels(decision_label(verdict)).inc()
        return verdict

    def _fallback(self, sample: sample_pb2.Sample, deferral: Deferral) -> verdict_pb2.Verdict:
        """A unary caller gets an answer: UNSURE, saying why, and never stored (a resend is judged)."""
        backend = self._deps.backend
        return fallback_verdict(
            sample.sample_id,
            sample.edge_id,
            sample.trace_id,
            origin="timeout" if deferral.reason == "timeout" else "backend_error",
            detail=deferral.detail,
            backend=backend.name,
            model_name=backend.model_name,
            model_version=backend.model_version,
            track_id=sample.track_id,
        )

    async def GetPolicy(  # noqa: N802
        self, request: session_pb2.GetPolicyRequest, context: Context
    ) -> policy_pb2.SignedPolicy:
        """The edge's signed policy; empty when it has that version already."""
        await self._refuse_undecodable(request, context)
        await self._check_edge(request.edge_id, context)
        policy = self._deps.policy
        if policy.version_for(request.edge_id, request.site_id) <= request.known_version:
            return policy_pb2.SignedPolicy()
        return policy.policy_for(request.edge_id, request.site_id)

    async def FetchModel(  # noqa: N802
        self, request: session_pb2.FetchModelRequest, context: Context
    ) -> AsyncIterator[session_pb2.ModelChunk]:
        """A published model's file from `request.offset` on, its signed manifest in the first piece."""
        await self._refuse_undecodable(request, context)
        await self._check_edge(request.edge_id, context)
        deps = self._deps
        pieces = model_pieces(deps.models, request, deps.metrics, deps.model_chunk_bytes)
        try:
            async for chunk in pieces:
                yield chunk
        except ServeRefusedError as refused:
            await context.abort(refused.code, str(refused))

    async def stop_sessions(self) -> None:
        """Refuse new calls; every session ends after delivering what it owes (within the grace)."""
        self._stopping = True
        for session in list(self._sessions):
            session.stop()

    async def wait_sessions_closed(self, timeout_s: float) -> bool:
        """Wait until every session stream ended; False when some are still open after `timeout_s`."""
        if self._sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), timeout_s)
        return not self._sessions

    async def _refuse_undecodable(self, request: object, context: Context) -> None:
        if isinstance(request, Undecodable):
            self._deps.metrics.bad_messages.labels(request.reason).inc()
            logger.info("call from %s refused: %s", context.peer(), request.describe())
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if request.reason == "oversized"
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            await context.abort(code, request.describe())

    async def _check_edge(self, edge_id: str, context: Context) -> None:
        known = self._deps.known_edges
        if not edge_id:
            self._deps.metrics.bad_messages.labels("malformed").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "edge_id is empty; every edge needs its id")
        refused = self._deps.identities.refusal(context.auth_context(), edge_id)
        if refused is not None:
            self._deps.metrics.bad_messages.labels(refused.reason).inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused.message)
        if known and edge_id not in known:
            self._deps.metrics.bad_messages.labels("unknown_edge").inc()
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"edge {edge_id!r} is not in the cloud's known_edges"
            )

    @staticmethod
    def _timeout_s(timeout_ms: float, remaining_s: float | None) -> float | None:
        """The batcher's deadline: the request's own, bounded by the call's; None: the batcher's default."""
        candidates = []
        if timeout_ms > 0:
            candidates.append(timeout_ms / 1000)
        if remaining_s is not None:
            candidates.append(max(0.0, remaining_s * DEADLINE_SHARE))
        return min(candidates) if candidates else None

    async def _on_policy_change(self, change: PolicyChange) -> None:
        for session in list(self._sessions):
            session.push_policy_if_newer()
