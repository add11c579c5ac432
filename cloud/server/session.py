"""One edge's Session stream: Hello first, then samples and heartbeats up; acks, verdicts, policies down.

Reading never waits for a judgement: each sample is handled in its own task (at most
`max_samples_in_flight_per_session` at once), which sends the sample's Ack and later its Verdict, or
a deferring Ack when it could not be judged (the edge keeps every sample until its Verdict; see
protos/session.proto).
Everything going down passes through one bounded queue per session; when it is full the producers
wait, which stops reading that edge's stream (gRPC flow control then slows the edge down): nothing
is dropped, an edge that does not read only slows itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from cloud.backends import Backend
from cloud.convert import MAX_STATUS_BYTES
from cloud.ingest import Deferral, IngestCore, decision_label
from cloud.metrics import CloudMetrics
from cloud.models.registry import ModelRegistry
from cloud.policy import PolicyEngine
from cloud.server.fleet import FleetStatus
from cloud.server.identity import IdentityCheck
from cloud.server.wire import Undecodable
from protos import sample_pb2, session_pb2, status_pb2

logger = logging.getLogger(__name__)
_END = None


@dataclass(frozen=True, slots=True)
class SessionDeps:
    """What every session of one server shares."""

    ingest: IngestCore
    backend: Backend
    policy: PolicyEngine
    fleet: FleetStatus
    metrics: CloudMetrics
    known_edges: frozenset[str]
    send_queue_size: int
    max_in_flight: int
    hello_timeout_s: float
    shutdown_grace_s: float
    identities: IdentityCheck = field(default_factory=IdentityCheck)
    models: ModelRegistry | None = None  # published edge models (FetchModel); None: none served
    model_chunk_bytes: int = 1 << 20


class _EndSessionError(Exception):
    """The session is refused or ended by the cloud: the error sent down, the gRPC status ending the stream."""

    def __init__(self, code: session_pb2.SessionErrorCode.ValueType, status: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class EdgeSession:
    """One Session stream, from Hello to its end."""

    def __init__(self, deps: SessionDeps, peer: str, auth_context: Mapping[str, Iterable[bytes]] | None = None) -> None:
        """A session with `peer` (its address, for logs) over a connection with `auth_context`; nothing read yet."""
        self._deps = deps
        self.peer = peer
        self._auth_context = auth_context or {}
        self.edge_id = ""
        self.site_id = ""
        self.policy_version = 0
        self.status: tuple[grpc.StatusCode, str] | None = None
        self._outgoing: asyncio.Queue[session_pb2.CloudMessage | None] = asyncio.Queue(deps.send_queue_size)
        self._slots = asyncio.Semaphore(deps.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    @property
    def greeted(self) -> bool:
        """True once a valid Hello was accepted."""
        return bool(self.edge_id)

    async def next_message(self) -> session_pb2.CloudMessage | None:
        """The next message to send down; None when the stream is to end."""
        return await self._outgoing.get()

    async def send(self, message: session_pb2.CloudMessage) -> None:
        """Queue a message to go down (waits while the queue is full)."""
        await self._outgoing.put(message)

    def stop(self) -> None:
        """Ask the session to end: stop reading, deliver the verdicts owed, then say SHUTTING_DOWN."""
        self._stop.set()

    def push_policy_if_newer(self) -> None:
        """Send the edge its policy if a newer version applies to it than the one it was sent."""
        if not self.greeted:
            return
        version = self._deps.policy.version_for(self.edge_id, self.site_id)
        if version <= self.policy_version:
            return
        self.policy_version = version
        signed = self._deps.policy.policy_for(self.edge_id, self.site_id)
        record = self._deps.fleet.get(self.edge_id)
        if record is not None:
            record.policy_version_sent = version
        self._spawn(self.send(session_pb2.CloudMessage(policy=signed)))
        logger.info("edge %s: policy v%d pushed", self.edge_id, version)

    async def run(self, requests: AsyncIterator[session_pb2.EdgeMessage]) -> None:
        """Read the stream until it ends, is refused or the cloud stops; always ends the outgoing queue."""
        reading = asyncio.create_task(self._read(requests), name=f"session-read-{self.peer}")
        reading.add_done_callback(_log_failure)
        stopping = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reading in done:
                reading.result()
            else:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
            await self._deliver_owed()
            if self._stop.is_set():
                raise _EndSessionError(
                    session_pb2.SESSION_ERROR_CODE_SHUTTING_DOWN,
                    grpc.StatusCode.UNAVAILABLE,
                    "the cloud is shutting down; reconnect (to another replica)",
                )
        except _EndSessionError as refused:
            await self._end_with(refused)
        except (grpc.RpcError, grpc.aio.BaseError) as err:
            logger.info("session %s %s: stream broke: %r", self.edge_id or "-", self.peer, err)
        except Exception as err:
            logger.exception("session %s %s failed", self.edge_id or "-", self.peer)
            await self._end_with(
                _EndSessionError(
                    session_pb2.SESSION_ERROR_CODE_INTERNAL, grpc.StatusCode.INTERNAL, f"cloud fault: {err}"
                )
            )
        finally:
            stopping.cancel()
            reading.cancel()
            for task in self._tasks:
                task.cancel()
            current = asyncio.current_task()
            if current is None or not current.cancelling():  # cancelled: nobody reads the queue any more
                await self._outgoing.put(_END)

    async def _end_with(self, refused: _EndSessionError) -> None:
        error = session_pb2.SessionError(code=refused.code, message=str(refused))
        await self.send(session_pb2.CloudMessage(error=error))
        self.status = (refused.status, str(refused))

    async def _deliver_owed(self) -> None:
        """Wait (at most the shutdown grace) for the acks and verdicts owed to this edge to be queued."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self._deps.shutdown_grace_s)
            if late:
                logger.warning(
                    "session %s: %d verdicts not delivered before the session ended", self.edge_id, len(late)
                )

    async def _read(self, requests: AsyncIterator[session_pb2.EdgeMessage]) -> None:
        iterator = aiter(requests)
        try:
            first = await asyncio.wait_for(anext(iterator), self._deps.hello_timeout_s)
        except (StopAsyncIteration, TimeoutError):
            first = None
        self._greet(first)
        async for message in iterator:
            if isinstance(message, Undecodable):  # see cloud.server.grpc_server: the stream goes on
                self._deps.metrics.bad_messages.labels(message.reason).inc()
                error = session_pb2.SessionError(
                    code=session_pb2.SESSION_ERROR_CODE_INVALID_MESSAGE, message=message.describe()
                )
                await self.send(session_pb2.CloudMessage(error=error))
                continue
            kind = message.WhichOneof("kind")
            if kind == "sample":
                await self._slots.acquire()
                self._spawn(self._on_sample(message.sample), release=True)
            elif kind == "heartbeat":
                await self._on_heartbeat(message.heartbeat)
            else:
                self._deps.metrics.bad_messages.labels("malformed").inc()
                problem = "a second Hello" if kind == "hello" else "an empty EdgeMessage"
                code = (
                    session_pb2.SESSION_ERROR_CODE_HELLO_EXPECTED
                    if kind == "hello"
                    else (session_pb2.SESSION_ERROR_CODE_INVALID_MESSAGE)
                )
                error = session_pb2.SessionError(code=code, message=f"{problem} was ignored")
                await self.send(session_pb2.CloudMessage(error=error))

    def _greet(self, first: session_pb2.EdgeMessage | None) -> None:
        metrics = self._deps.metrics
        if isinstance(first, Undecodable):
            metrics.bad_messages.labels(first.reason).inc()
            raise _EndSessionError(
                session_pb2.SESSION_ERROR_CODE_HELLO_EXPECTED,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first message of a Session must be a Hello: {first.describe()}",
            )
        if first is None or first.WhichOneof("kind") != "hello":
            metrics.bad_messages.labels("no_hello").inc()
            got = "nothing" if first is None else (first.WhichOneof("kind") or "an empty message")
            raise _EndSessionError(
                session_pb2.SESSION_ERROR_CODE_HELLO_EXPECTED,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the first message of a Session must be a Hello, got {got}; reconnect and say Hello first",
            )
        hello = first.hello
        if not hello.edge_id:
            metrics.bad_messages.labels("malformed").inc()
            raise _EndSessionError(
                session_pb2.SESSION_ERROR_CODE_INVALID_MESSAGE,
                grpc.StatusCode.INVALID_ARGUMENT,
                "Hello.edge_id is empty; every edge needs its id",
            )
        refused = self._deps.identities.refusal(self._auth_context, hello.edge_id, hello.site_id)
        if refused is not None:
            metrics.bad_messages.labels(refused.reason).inc()
            logger.warning("session %s refused (%s): %s", self.peer, refused.reason, refused.message)
            raise _EndSessionError(
                session_pb2.SESSION_ERROR_CODE_UNKNOWN_EDGE, grpc.StatusCode.PERMISSION_DENIED, refused.message
            )
        known = self._deps.known_edges
        if known and hello.edge_id not in known:
            metrics.bad_messages.labels("unknown_edge").inc()
            raise _EndSessionError(
                session_pb2.SESSION_ERROR_CODE_UNKNOWN_EDGE,
                grpc.StatusCode.PERMISSION_DENIED,
                f"edge {hello.edge_id!r} is not in the cloud's known_edges; add it to cloud.yaml to let it in",
            )
        self.edge_id, self.site_id = hello.edge_id, hello.site_id
        self.policy_version = hello.policy_version
        self._deps.fleet.connected(hello)
        metrics.sessions_open.inc()
        logger.info("session of edge %s (site %s) from %s", self.edge_id, self.site_id or "-", self.peer)
        self.push_policy_if_newer()

    def closed(self) -> None:
        """Account for the end of the stream (call once, after `run`)."""
        if self.greeted:
            self._deps.fleet.disconnected(self.edge_id)
            self._deps.metrics.sessions_open.dec()

    async def _on_heartbeat(self, status: status_pb2.EdgeStatus) -> None:
        problem = None
        if status.ByteSize() > MAX_STATUS_BYTES:
            reason, problem = "oversized", f"a heartbeat of {status.ByteSize()} bytes (at most {MAX_STATUS_BYTES})"
        elif status.edge_id and status.edge_id != self.edge_id:
            reason, problem = "impostor", f"a heartbeat of edge {status.edge_id!r} on edge {self.edge_id!r}'s session"
        elif status.site_id and status.site_id != self.site_id:
            reason, problem = (
                "impostor",
                f"a heartbeat naming site {status.site_id!r}; the session's is {self.site_id!r}",
            )
        if problem is None:
            self._deps.fleet.heartbeat(self.edge_id, status)
            return
        self._deps.metrics.bad_messages.labels(reason).inc()
        error = session_pb2.SessionError(
            code=session_pb2.SESSION_ERROR_CODE_INVALID_MESSAGE, message=f"{problem} was ignored"
        )
        await self.send(session_pb2.CloudMessage(error=error))

    async def _on_sample(self, sample: sample_pb2.Sample) -> None:
        if not sample.edge_id:
            sample.edge_id = self.edge_id
        if sample.edge_id != self.edge_id:
            self._deps.metrics.bad_messages.labels("malformed").inc()
            problem = (
                f"sample {sample.sample_id}: edge_id {sample.edge_id!r} is not this session's edge {self.edge_id!r}"
            )
            await self.send(session_pb2.CloudMessage(ack=session_pb2.Ack(sample_id=sample.sample_id, error=problem)))
            return
        self._deps.fleet.sample(self.edge_id)
        admission = await self._deps.ingest.admit(sample)
        await self.send(session_pb2.CloudMessage(ack=admission.ack))
        if admission.outcome is None:
            return
        started = time.monotonic()
        verdict = await asyncio.shield(admission.outcome)
        if isinstance(verdict, Deferral):
            await self.send(session_pb2.CloudMessage(ack=verdict.ack()))
            return
        await self.send(session_pb2.CloudMessage(verdict=verdict))
        self._deps.metrics.verdicts_sent.labels(decision_label(verdict)).inc()
        logger.debug("sample %s: verdict after %.0f ms", sample.sample_id, (time.monotonic() - started) * 1000)

    def _spawn(self, work: Coroutine[Any, Any, None], release: bool = False) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if release:
            task.add_done_callback(lambda _: self._slots.release())
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    """Retrieve a finished task's exception; a broken stream is routine, anything else is logged as an error."""
    if task.cancelled() or task.exception() is None:
        return
    error = task.exception()
    if isinstance(error, _EndSessionError):  # a refusal: said once, by the session, without a traceback
        logger.info("session task %s: refused: %s", task.get_name(), error)
    elif isinstance(error, grpc.RpcError | grpc.aio.BaseError):
        logger.debug("session task %s ended: %r", task.get_name(), error)
    else:
        logger.error("session task %s failed", task.get_name(), exc_info=error)
