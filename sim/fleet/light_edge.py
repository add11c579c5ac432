"""One lightweight simulated edge: the agent's own dispatcher and gRPC uplink, fed prepared samples.

A light edge leaves out what comes before the outbox in the agent (cameras, detector, miner). Its
producer puts prepared crops with ground-truth detections (`sim.fleet.light_samples`) into an
in-memory outbox (`sim.fleet.memory_outbox`, ordered as the agent's SQLite one) at a steady rate,
and from there on the code is the product's: `edge.uplink.dispatch.Dispatcher` decides what goes
up, what is in flight and when it goes again (window, budget, late acks and verdicts, deferrals,
the cloud coming back), and `edge.uplink.grpc.GrpcUplink` keeps the Session stream, reconnects
with its configured backoff and frames the samples. What comes down is routed as the agent routes
it (edge/agent.py); each verdict is also checked against the decision the ground truth calls for.
So a fleet run's "0 lost" is a statement about the delivery protocol the agents run.

The edges of a fleet share one `EdgeMetrics` (in the `FleetTally`): its counters, kept by the real
code, are the fleet's totals (samples sent with resends, bytes, sessions, acks, resends,
deferrals). Its gauges (connected, in flight) mean nothing summed over edges and are not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc.aio

from common.supervise import spawn
from edge.config import GrpcUplinkConfig
from edge.metrics import EdgeMetrics
from edge.policy.settings import UplinkPolicy
from edge.uplink import UplinkHandlers
from edge.uplink.dispatch import Dispatcher
from edge.uplink.grpc import GrpcUplink
from protos import policy_pb2, session_pb2, status_pb2, verdict_pb2
from sim.fleet.light_config import LightFleetConfig
from sim.fleet.light_samples import Expected, PreparedCrop, build_sample
from sim.fleet.memory_outbox import MemoryOutbox

logger = logging.getLogger(__name__)
SITE_ID = "light"


@dataclass
class FleetTally:
    """What every edge of one fleet saw, added up (one event loop: no locks).

    The delivery figures are the real code's counters in `metrics`; the rest is what only the
    simulation knows: whether each verdict was the right one, and what was never sent or answered.
    """

    metrics: EdgeMetrics = field(default_factory=EdgeMetrics)
    queued: int = 0
    unique_sent: int = 0
    verdicts: int = 0
    duplicates: int = 0
    correct: int = 0
    wrong: int = 0
    refused: int = 0
    policies: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    origins: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    verdict_times: list[float] = field(default_factory=list)
    wrong_examples: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    unsent: int = 0
    lost: int = 0

    def count(self, name: str) -> int:
        """A counter of `metrics` (name without `_total`), summed over its labels."""
        return int(sum(self.by_label(name).values()))

    def by_label(self, name: str) -> dict[str, int]:
        """A counter of `metrics` by its one label's value ("" for a counter without labels)."""
        values: dict[str, int] = {}
        for family in self.metrics.registry.collect():
            if family.name != name:
                continue
            for sample in family.samples:
                if sample.name == f"{name}_total":
                    key = next(iter(sample.labels.values()), "")
                    values[key] = values.get(key, 0) + int(sample.value)
        return values

    @property
    def sends(self) -> int:
        """Samples written to a Session stream, resends included (edgeglm_edge_samples_sent)."""
        return self.count("edgeglm_edge_samples_sent")

    @property
    def bytes_sent(self) -> int:
        """Bytes of those samples (edgeglm_edge_uplink_bytes)."""
        return self.count("edgeglm_edge_uplink_bytes")

    @property
    def sessions_opened(self) -> int:
        """Session streams opened, the first of each edge included (edgeglm_edge_uplink_reconnects)."""
        return self.count("edgeglm_edge_uplink_reconnects")


@dataclass(frozen=True, slots=True)
class _Queued:
    expected: Expected
    at: float  # monotonic, when it went into the outbox


class LightEdge:
    """One simulated edge with `config.samples_each` samples to deliver over its cameras' prepared crops."""

    def __init__(
        self,
        edge_id: str,
        crops_by_camera: list[list[PreparedCrop]],
        config: LightFleetConfig,
        tally: FleetTally,
        uplink: GrpcUplinkConfig,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """An edge whose camera i shows the crops `crops_by_camera[i]`, reaching the cloud with `uplink`
        settings (over `channel`, shared with other edges, when given); outcomes go to `tally`."""
        self.edge_id = edge_id
        self._config = config
        self._tally = tally
        self._rng = random.Random(f"{config.seed}/{edge_id}")
        self._plan = [
            (n, n % len(crops_by_camera), self._rng.choice(crops_by_camera[n % len(crops_by_camera)]))
            for n in range(config.samples_each)
        ]
        self._queued: dict[str, _Queued] = {}
        self._answered: set[str] = set()  # a verdict came, or the cloud refused it for good
        self._evicted: set[str] = set()
        self._settled: set[str] = set()  # answered or evicted: nothing more to wait for
        self._complete = asyncio.Event()
        metrics = tally.metrics
        self.outbox = MemoryOutbox(edge_id, max_bytes=config.outbox.max_bytes, metrics=metrics)
        handlers = UplinkHandlers(
            hello=self._hello,
            status=self._status,
            on_ack=self._on_ack,
            on_verdict=self._on_verdict,
            on_policy=self._on_policy,
            on_cloud_back=self._on_cloud_back,
            on_deferred=self._on_deferred,
        )
        self.uplink = GrpcUplink(uplink, handlers, metrics, channel=channel, name=edge_id)
        self.dispatcher = Dispatcher(
            self.outbox,
            self.uplink,
            UplinkPolicy(),  # the agent's built-in budget; a light edge verifies no pushed policy to apply
            metrics,
            window=config.outbox.window,
            ack_timeout_s=config.outbox.ack_timeout_s,
            verdict_timeout_s=config.outbox.verdict_timeout_s,
            poll_s=config.dispatch_poll_s,
        )

    async def run(self, start_at: float, deadline: float) -> None:
        """Start at `start_at` (monotonic), queue the plan at the configured rate, and end once every
        sample is answered or at `deadline`."""
        await asyncio.sleep(max(0.0, min(start_at, deadline) - time.monotonic()))
        await self.uplink.start()
        dispatch = spawn(f"{self.edge_id}-dispatch", self.dispatcher.run, self._task_failed)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._produce()
                    await self._complete.wait()
        finally:
            dispatch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatch
            await self.uplink.stop()

    async def _produce(self) -> None:
        """Put the plan into the outbox at `rate_per_edge_hz`, waking the dispatcher for each sample."""
        started = time.monotonic()
        for number, camera, crop in self._plan:
            await asyncio.sleep(max(0.0, started + number / self._config.rate_per_edge_hz - time.monotonic()))
            sample_id = f"{self.edge_id}-{number:06d}"
            sample = build_sample(crop, sample_id, self.edge_id, f"cam{camera}", self._config.box_noise_px, self._rng)
            self._queued[sample_id] = _Queued(crop.expected, time.monotonic())
            self._tally.queued += 1
            for evicted in await self.outbox.put(sample):
                self._evicted.add(evicted)
                self._settled.add(evicted)
                self._tally.errors["outbox_evicted"] += 1
            self.dispatcher.notify()
        self._check_done()

    def _settle(self, sample_id: str) -> None:
        self._answered.add(sample_id)
        self._settled.add(sample_id)
        self._check_done()

    def _check_done(self) -> None:
        if len(self._queued) == len(self._settled) == len(self._plan):
            self._complete.set()

    def _task_failed(self, name: str, err: BaseException) -> None:
        """The dispatcher failed (logged with its traceback by the supervisor) and is being restarted."""
        self._tally.metrics.task_failures.labels("dispatch").inc()
        self._tally.errors["dispatch_failed"] += 1

    def _hello(self) -> session_pb2.Hello:
        return session_pb2.Hello(
            edge_id=self.edge_id,
            site_id=SITE_ID,
            model_name="light-sim",
            model_version="gt-noise",
            agent_version="light-sim",
            capabilities=["crop"],
        )

    def _status(self) -> status_pb2.EdgeStatus:
        status = status_pb2.EdgeStatus(
            edge_id=self.edge_id,
            site_id=SITE_ID,
            state=status_pb2.EDGE_STATE_ONLINE,
            model_name="light-sim",
            model_version="gt-noise",
            outbox_samples=len(self.outbox),
        )
        status.reported_at.GetCurrentTime()
        return status

    # What comes down goes to the dispatcher, as the agent's handlers do; the tally notes the outcome.
    async def _on_ack(self, ack: session_pb2.Ack) -> None:
        await self.dispatcher.on_ack(ack)
        refused = not ack.accepted and ack.retry_after_ms <= 0
        if refused and ack.sample_id in self._queued and ack.sample_id not in self._answered:
            # Malformed: no verdict will come and the dispatcher has dropped it.
            self._tally.refused += 1
            self._settle(ack.sample_id)

    def _on_cloud_back(self) -> None:
        self.dispatcher.cloud_back()

    def _on_deferred(self, sample_id: str, after_s: float, reason: str) -> None:
        self.dispatcher.deferred(sample_id, after_s, reason)

    async def _on_policy(self, _: policy_pb2.SignedPolicy) -> None:
        self._tally.policies += 1

    async def _on_verdict(self, verdict: verdict_pb2.Verdict) -> None:
        tally = self._tally
        in_flight = await self.dispatcher.on_verdict(verdict.sample_id)
        queued = self._queued.get(verdict.sample_id)
        if queued is None:
            tally.errors["verdict_for_unknown_sample"] += 1
            return
        if verdict.sample_id in self._answered:
            tally.duplicates += 1  # a resend crossed the first answer
            return
        if in_flight is None:
            tally.errors["verdict_for_sample_not_in_flight"] += 1
        now = time.monotonic()
        tally.verdicts += 1
        tally.latencies_ms.append((now - queued.at) * 1000)
        tally.verdict_times.append(now)
        decision = verdict_pb2.Decision.Name(verdict.decision).removeprefix("DECISION_").lower()
        tally.decisions[decision] += 1
        tally.origins[verdict_pb2.VerdictOrigin.Name(verdict.origin).removeprefix("VERDICT_ORIGIN_").lower()] += 1
        if decision == queued.expected and verdict.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND:
            tally.correct += 1
        else:
            tally.wrong += 1
            if len(tally.wrong_examples) < 10:
                tally.wrong_examples.append(f"{verdict.sample_id}: expected {queued.expected}, got {decision}")
        self._settle(verdict.sample_id)

    def account_end(self) -> None:
        """Add what this edge sent, never sent and never got answered to the tally (once, after `run`).

        Sent: answered, or still in the dispatcher's flight. Lost: sent and unanswered, or evicted from
        the outbox. Unsent: never queued, or queued and never handed to the uplink.
        """
        in_flight = self.dispatcher.in_flight_ids
        waiting = [sample_id for sample_id in self._queued if sample_id not in self._answered]
        lost = [sample_id for sample_id in waiting if sample_id in in_flight or sample_id in self._evicted]
        tally = self._tally
        tally.unique_sent += len(self._answered) + sum(1 for sample_id in lost if sample_id in in_flight)
        tally.unsent += len(self._plan) - len(self._queued) + len(waiting) - len(lost)
        tally.lost += len(lost)
        room = 10 - len(tally.lost_examples)
        tally.lost_examples.extend(lost[: max(0, room)])
