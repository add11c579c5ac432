"""One lightweight simulated edge: a real Session stream, real samples at a steady rate, every verdict awaited.

It keeps the delivery contract of protos/session.proto as the agent's dispatcher does: Hello first,
samples up, acks, verdicts and policies down; a sample is kept until its verdict (an accepted Ack
only says the cloud is judging it), a deferring Ack sends it again after its retry_after, and when
the stream breaks it opens a new one (bounded tries, jittered backoff) and resends every sample it
has no verdict for, under the same sample_id, which the cloud deduplicates. (It is its own small
implementation of that contract, not the agent's uplink code: a thousand of those in one process
would cost a thread and a SQLite file each.)
It has no detector, outbox or policy logic: its samples are prepared crops with ground-truth
detections, so the verdict each should get is known and checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import grpc.aio

from protos import sample_pb2, session_pb2, session_pb2_grpc, verdict_pb2
from sim.fleet.light_config import LightFleetConfig
from sim.fleet.light_samples import Expected, PreparedCrop, build_sample

SessionCall = grpc.aio.StreamStreamCall[session_pb2.EdgeMessage, session_pb2.CloudMessage]
# How long a finished edge waits for the cloud to close its stream after it stopped writing.
CLOSE_WAIT_S = 5.0


@dataclass
class FleetTally:
    """What every edge of one fleet saw, added up (one event loop: no locks)."""

    sends: int = 0
    unique_sent: int = 0
    bytes_sent: int = 0
    verdicts: int = 0
    duplicates: int = 0
    correct: int = 0
    wrong: int = 0
    refused: int = 0
    sessions_opened: int = 0
    policies: int = 0
    acks: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    origins: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    verdict_times: list[float] = field(default_factory=list)
    wrong_examples: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    unsent: int = 0
    lost: int = 0


@dataclass
class _Sent:
    sample: sample_pb2.Sample
    first_sent: float
    expected: Expected


class LightEdge:
    """One simulated edge with `config.samples_each` samples to send over its cameras' prepared crops."""

    def __init__(
        self, edge_id: str, crops_by_camera: list[list[PreparedCrop]], config: LightFleetConfig, tally: FleetTally
    ) -> None:
        """An edge whose camera i shows the crops `crops_by_camera[i]`; outcomes go to `tally`."""
        self.edge_id = edge_id
        self._config = config
        self._tally = tally
        self._rng = random.Random(f"{config.seed}/{edge_id}")
        self._plan = [
            (n, n % len(crops_by_camera), self._rng.choice(crops_by_camera[n % len(crops_by_camera)]))
            for n in range(config.samples_each)
        ]
        self._next = 0
        self._sent: dict[str, _Sent] = {}
        self._deferred: dict[str, float] = {}  # sample_id -> when to send it again (monotonic)
        self._answered: set[str] = set()
        self._complete = asyncio.Event()
        self._t0: float | None = None
        self._last_send = 0.0

    @property
    def unanswered(self) -> list[str]:
        """Sample ids sent and not answered (no verdict and not refused)."""
        return [sample_id for sample_id in self._sent if sample_id not in self._answered]

    @property
    def unsent(self) -> int:
        """Planned samples never sent."""
        return len(self._plan) - self._next

    def _done(self) -> bool:
        return self._next >= len(self._plan) and not self.unanswered

    async def run(self, stub: session_pb2_grpc.EdgeGLMAsyncStub, start_at: float, deadline: float) -> None:
        """Start at `start_at` (monotonic), send everything, collect every verdict; stop by `deadline`."""
        await asyncio.sleep(max(0.0, min(start_at, deadline) - time.monotonic()))
        backoff = self._config.reconnect_backoff_s
        for _ in range(self._config.max_sessions_per_edge):
            if self._done() or time.monotonic() >= min(deadline, self._drain_until(deadline)):
                break
            try:
                await self._session(stub, deadline)
            except grpc.aio.AioRpcError as err:
                self._tally.errors[f"stream_{err.code().name.lower()}"] += 1
            except asyncio.InvalidStateError:  # a write raced the cloud closing the stream
                self._tally.errors["stream_closed_while_writing"] += 1
            if self._done():
                break
            pause = min(backoff * (1 + self._rng.random()), max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)
            backoff = min(backoff * 2, 10.0)

    def _drain_until(self, deadline: float) -> float:
        """When waiting for owed verdicts stops (only meaningful once everything was sent)."""
        if self._next < len(self._plan):
            return deadline
        return min(deadline, self._last_send + self._config.verdict_wait_s)

    async def _session(self, stub: session_pb2_grpc.EdgeGLMAsyncStub, deadline: float) -> None:
        call: SessionCall = stub.Session(
            None, timeout=max(0.1, deadline - time.monotonic()), wait_for_ready=True
        )  # None: we write to the call ourselves
        self._tally.sessions_opened += 1
        self._complete.clear()
        reader = asyncio.create_task(self._read(call), name=f"light-read-{self.edge_id}")
        try:
            await call.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id=self.edge_id, site_id="light")))
            for sample_id in self.unanswered:
                await self._write(call, self._sent[sample_id].sample)
                self._tally.errors["resent"] += 1
            await self._send_planned(call, reader, deadline)
            waiter = asyncio.create_task(self._complete.wait())
            try:
                while not reader.done() and not waiter.done():
                    timeout = max(0.0, self._drain_until(deadline) - time.monotonic())
                    if timeout <= 0:
                        break
                    # Wake at least every second to send again what the cloud deferred.
                    await asyncio.wait({reader, waiter}, timeout=min(1.0, timeout), return_when=asyncio.FIRST_COMPLETED)
                    await self._resend_deferred(call)
            finally:
                waiter.cancel()
            if not reader.done():
                await call.done_writing()
                await asyncio.wait({reader}, timeout=min(CLOSE_WAIT_S, max(0.0, deadline - time.monotonic())))
            if reader.done():
                reader.result()  # the stream's error, if it broke
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            call.cancel()

    async def _send_planned(self, call: SessionCall, reader: asyncio.Task[None], deadline: float) -> None:
        """Send the rest of the plan at the configured rate, while the stream lives."""
        if self._t0 is None:
            self._t0 = time.monotonic()
        while self._next < len(self._plan) and not reader.done():
            due = self._t0 + self._next / self._config.rate_per_edge_hz
            wait = min(due, deadline) - time.monotonic()
            if wait > 0:
                await asyncio.wait({reader}, timeout=wait)
                if reader.done() or time.monotonic() >= deadline:
                    return
            await self._resend_deferred(call)
            number, camera, crop = self._plan[self._next]
            sample_id = f"{self.edge_id}-{number:06d}"
            sample = build_sample(crop, sample_id, self.edge_id, f"cam{camera}", self._config.box_noise_px, self._rng)
            self._sent[sample_id] = _Sent(sample, time.monotonic(), crop.expected)
            self._next += 1
            self._tally.unique_sent += 1
            await self._write(call, sample)
            self._last_send = time.monotonic()

    async def _resend_deferred(self, call: SessionCall) -> None:
        now = time.monotonic()
        for sample_id, due in list(self._deferred.items()):
            if due <= now:
                del self._deferred[sample_id]
                if sample_id not in self._answered:
                    await self._write(call, self._sent[sample_id].sample)
                    self._tally.errors["resent"] += 1

    async def _write(self, call: SessionCall, sample: sample_pb2.Sample) -> None:
        await call.write(session_pb2.EdgeMessage(sample=sample))
        self._tally.sends += 1
        self._tally.bytes_sent += sample.ByteSize()

    async def _read(self, call: SessionCall) -> None:
        async for message in call:
            kind = message.WhichOneof("kind")
            if kind == "verdict":
                self._on_verdict(message.verdict)
            elif kind == "ack":
                self._on_ack(message.ack)
            elif kind == "policy":
                self._tally.policies += 1
            elif kind == "error":
                self._tally.errors[f"session_{session_pb2.SessionErrorCode.Name(message.error.code).lower()}"] += 1
            if self._done():
                self._complete.set()

    def _on_ack(self, ack: session_pb2.Ack) -> None:
        self._tally.acks += 1
        if not ack.accepted and ack.retry_after_ms > 0 and ack.sample_id in self._sent:
            # Deferred (overloaded, judging failed): kept, and sent again on this stream after retry_after.
            self._tally.errors[f"deferred_{session_pb2.SessionErrorCode.Name(ack.code).lower()}"] += 1
            self._deferred[ack.sample_id] = time.monotonic() + ack.retry_after_ms / 1000
            return
        if not ack.accepted and ack.sample_id in self._sent and ack.sample_id not in self._answered:
            # Refused as malformed: no verdict will come and a resend would be refused again.
            self._answered.add(ack.sample_id)
            self._tally.refused += 1
            self._tally.errors["refused"] += 1

    def _on_verdict(self, verdict: verdict_pb2.Verdict) -> None:
        tally = self._tally
        sent = self._sent.get(verdict.sample_id)
        if sent is None:
            tally.errors["verdict_for_unknown_sample"] += 1
            return
        if verdict.sample_id in self._answered:
            tally.duplicates += 1
            return
        now = time.monotonic()
        self._answered.add(verdict.sample_id)
        tally.verdicts += 1
        tally.latencies_ms.append((now - sent.first_sent) * 1000)
        tally.verdict_times.append(now)
        decision = verdict_pb2.Decision.Name(verdict.decision).removeprefix("DECISION_").lower()
        tally.decisions[decision] += 1
        tally.origins[verdict_pb2.VerdictOrigin.Name(verdict.origin).removeprefix("VERDICT_ORIGIN_").lower()] += 1
        if decision == sent.expected and verdict.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND:
            tally.correct += 1
        else:
            tally.wrong += 1
            if len(tally.wrong_examples) < 10:
                tally.wrong_examples.append(f"{verdict.sample_id}: expected {sent.expected}, got {decision}")

    def account_end(self) -> None:
        """Add what this edge never sent and never got answered to the tally (call once, at the end)."""
        unanswered = self.unanswered
        self._tally.unsent += self.unsent
        self._tally.lost += len(unanswered)
        room = 10 - len(self._tally.lost_examples)
        self._tally.lost_examples.extend(unanswered[: max(0, room)])
