"""From the outbox to the transport, under the policy's byte budget.

Every suspicious sample is written to the outbox first (on disk, SQLite WAL). This dispatcher is the
only reader: while the transport is connected it takes the most urgent samples not yet in flight,
waits for the token bucket to allow their bytes, and hands them to the transport. A sample leaves
the outbox only when the cloud acknowledges it, so a crash, a restart or an outage loses nothing;
after an outage the backlog drains in the policy's replay order at the same capped rate, so a fleet
coming back does not stampede the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Literal, Protocol

from edge.metrics import EdgeMetrics
from edge.outbox import Outbox
from edge.policy.settings import UplinkPolicy
from edge.uplink.budget import TokenBucket
from protos import sample_pb2

logger = logging.getLogger(__name__)

# A backlog at least this old (seconds) is replayed in the policy's replay order; fresh samples go
# most-uncertain first.
BACKLOG_AGE_S = 5.0


class Transport(Protocol):
    """What the dispatcher needs of an uplink (gRPC or MQTT)."""

    @property
    def connected(self) -> bool: ...

    def submit(self, sample: sample_pb2.Sample) -> bool: ...


class Dispatcher:
    """Moves samples from the outbox to a transport at the budgeted rate."""

    def __init__(
        self,
        outbox: Outbox,
        transport: Transport,
        policy: UplinkPolicy,
        metrics: EdgeMetrics,
        *,
        window: int = 16,
        poll_s: float = 0.05,
        can_send: Callable[[], bool] | None = None,
    ) -> None:
        self._outbox = outbox
        self._transport = transport
        self._bucket = TokenBucket(policy.budget_bytes_per_s, policy.burst_bytes)
        self._replay_order: Literal["newest_first", "oldest_first"] = policy.replay_order
        self._metrics = metrics
        self._window = window
        self._poll_s = poll_s
        self._in_flight: set[str] = set()
        self._wake = asyncio.Event()
        # Whether the cloud is there to take samples (default: the transport is connected).
        self._can_send = can_send or (lambda: transport.connected)

    def update_policy(self, policy: UplinkPolicy) -> None:
        """New budget and replay order, effective for the next sample."""
        self._bucket.update(policy.budget_bytes_per_s, policy.burst_bytes)
        self._replay_order = policy.replay_order

    def notify(self) -> None:
        """A sample was added to the outbox."""
        self._wake.set()

    def acknowledged(self, sample_id: str) -> None:
        """The transport got the cloud's ack (the outbox row is deleted by the caller)."""
        self._in_flight.discard(sample_id)
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Samples handed to the transport and not yet acknowledged."""
        return len(self._in_flight)

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            if not self._can_send():
                # Whatever was in flight will be resent by the transport or, after a restart, by us.
                await self._sleep()
                continue
            room = self._window - len(self._in_flight)
            if room <= 0:
                await self._sleep()
                continue
            stats = await self._outbox.stats()
            order: Literal["priority", "newest_first", "oldest_first"] = (
                self._replay_order if stats.oldest_age_s > BACKLOG_AGE_S else "priority"
            )
            batch = await self._outbox.next_batch(room, order, exclude=set(self._in_flight))
            if not batch:
                await self._sleep()
                continue
            for sample in batch:
                size = sample.ByteSize()
                await self._bucket.take(size, deadline=time.monotonic() + 3600)
                if not self._can_send() or not self._transport.submit(sample):
                    break
                self._in_flight.add(sample.sample_id)

    async def _sleep(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._poll_s)
