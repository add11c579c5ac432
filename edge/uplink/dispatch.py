"""From the outbox to the transport under the policy's byte budget, until each sample's verdict comes.

Every suspicious sample is written to the outbox first (on disk, SQLite WAL; the dispatcher reads it
through `edge.outbox.SampleQueue`, which the lightweight fleet fills in memory). The dispatcher is the
only reader, and the one place that knows what is in flight: a sample sent whose verdict has not
come. It keeps the delivery contract of `protos/session.proto`:

- A sample leaves the outbox only when its Verdict arrives, or when the cloud refuses it for good
  (an Ack with accepted false and no retry_after). An accepted Ack only says the cloud is judging.
- At most `window` samples are in flight, so an edge never has more than that waiting in the cloud.
- A sample in flight is sent again when the cloud comes back (a new session, a bridge online
  again), when its Ack is `ack_timeout_s` late, when its Verdict is `verdict_timeout_s` late after
  the Ack, and after the `retry_after_ms` of a deferring Ack. The cloud deduplicates on (edge_id, sample_id)
  and answers a judged sample with its stored verdict, so a resend is never judged twice.
- OVERLOADED is back-pressure: nothing new is sent until its retry_after has passed.

After an outage the backlog drains in the policy's replay order at the same capped rate, resends
included, so a fleet coming back does not stampede the cloud. Outbox errors (a full or failing disk)
are logged, counted and waited out; they never end the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge.metrics import EdgeMetrics
from edge.outbox import OutboxError, OutboxItem, SampleQueue
from edge.policy.settings import UplinkPolicy
from edge.uplink.base import Uplink
from edge.uplink.budget import TokenBucket
from protos import session_pb2

logger = logging.getLogger(__name__)

# A backlog at least this old (seconds) is replayed in the policy's replay order; fresh samples go
# most-uncertain first.
BACKLOG_AGE_S = 5.0
OUTBOX_RETRY_S = 1.0  # after an outbox error, wait this long before reading it again
DROP_REFUSED = "cloud_refused"


@dataclass(slots=True)
class InFlight:
    """A sample sent and not yet answered with its verdict."""

    item: OutboxItem
    sent_at: float
    resend_at: float  # monotonic; when it goes again unless answered first
    acked: bool = False
    sends: int = 1


@dataclass(frozen=True, slots=True)
class Answered:
    """A sample whose verdict came, with how long the last send took to be answered."""

    item: OutboxItem
    round_trip_s: float  # from its last send to its verdict: the link and the cloud, not the edge's own queue
    sends: int


class Dispatcher:
    """Moves samples from the outbox to an uplink at the budgeted rate and tracks them to their verdict."""

    def __init__(
        self,
        outbox: SampleQueue,
        uplink: Uplink,
        policy: UplinkPolicy,
        metrics: EdgeMetrics,
        *,
        window: int = 16,
        ack_timeout_s: float = 30.0,
        verdict_timeout_s: float = 120.0,
        poll_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._outbox = outbox
        self._uplink = uplink
        self._bucket = TokenBucket(policy.budget_bytes_per_s, policy.burst_bytes, clock=clock)
        self._replay_order: Literal["newest_first", "oldest_first"] = policy.replay_order
        self._metrics = metrics
        self._window = window
        self._ack_timeout_s = ack_timeout_s
        self._verdict_timeout_s = verdict_timeout_s
        self._poll_s = poll_s
        self._clock = clock
        self._in_flight: dict[str, InFlight] = {}
        self._paused_until = -math.inf
        self._wake = asyncio.Event()
        self._outbox_failing = False
        self.passes = 0  # turns of the run loop: lets a watcher know the dispatcher looked again

    def update_policy(self, policy: UplinkPolicy) -> None:
        """New budget and replay order, effective for the next sample."""
        self._bucket.update(policy.budget_bytes_per_s, policy.burst_bytes)
        self._replay_order = policy.replay_order

    def notify(self) -> None:
        """A sample was added to the outbox."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Samples sent whose verdict has not come yet."""
        return len(self._in_flight)

    @property
    def in_flight_ids(self) -> frozenset[str]:
        """The ids of the samples in flight, as of now (a copy)."""
        return frozenset(self._in_flight)

    @property
    def outbox_failing(self) -> bool:
        """True while the outbox cannot be read or written (e.g. a full disk)."""
        return self._outbox_failing

    def cloud_back(self) -> None:
        """A cloud is there again: everything in flight goes again (what it had may be lost)."""
        now = self._clock()
        for entry in self._in_flight.values():
            entry.resend_at = now
            entry.acked = False
        self._paused_until = -math.inf
        self._wake.set()

    def deferred(self, sample_id: str, after_s: float, reason: str) -> None:
        """The sample was not taken (by the cloud or the broker): keep it, send it again after `after_s`."""
        entry = self._in_flight.get(sample_id)
        if entry is None:
            return
        self._metrics.samples_deferred.labels(reason).inc()
        entry.acked = False
        # Jittered, so that a fleet deferred at once does not come back at once.
        entry.resend_at = self._clock() + after_s * (1 + 0.2 * random.random())
        self._wake.set()  # the loop may be asleep until a later resend: it must look at this one

    async def on_ack(self, ack: session_pb2.Ack) -> None:
        """Accepted: wait for the verdict. Deferred: send again later. Refused for good: drop (counted)."""
        outcome = "duplicate" if ack.duplicate else "accepted" if ack.accepted else "deferred"
        if not ack.accepted and ack.retry_after_ms <= 0:
            outcome = "refused"
        self._metrics.acks.labels(outcome).inc()
        entry = self._in_flight.get(ack.sample_id)
        if ack.accepted:
            if entry is not None:
                entry.acked = True
                entry.resend_at = self._clock() + self._verdict_timeout_s
            return
        if ack.retry_after_ms > 0:
            after_s = ack.retry_after_ms / 1000
            reason = session_pb2.SessionErrorCode.Name(ack.code).removeprefix("SESSION_ERROR_CODE_").lower()
            if ack.code == session_pb2.SESSION_ERROR_CODE_OVERLOADED:
                self._paused_until = max(self._paused_until, self._clock() + after_s)
                logger.info("cloud overloaded: sending paused for %.1f s (%s)", after_s, ack.error)
            self.deferred(ack.sample_id, after_s, reason)
            return
        # Refused as malformed: the cloud would refuse it again; it must not stay to be resent forever.
        logger.warning("cloud refused sample %s for good: %s", ack.sample_id, ack.error)
        self._in_flight.pop(ack.sample_id, None)
        self._metrics.samples_dropped.labels(DROP_REFUSED).inc()
        await self._remove(ack.sample_id)
        self._wake.set()

    async def on_verdict(self, sample_id: str) -> Answered | None:
        """The sample's verdict came: it leaves the outbox. Returns what was in flight (None: not ours)."""
        entry = self._in_flight.pop(sample_id, None)
        answered_at = self._clock()
        await self._remove(sample_id)
        self._metrics.samples_in_flight.set(len(self._in_flight))
        self._wake.set()
        if entry is None:
            return None
        return Answered(entry.item, max(0.0, answered_at - entry.sent_at), entry.sends)

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            self.passes += 1
            # Cleared as a pass starts, not as it ends: a notify that comes while this pass reads the
            # outbox or waits for the budget then cuts the next sleep short instead of being lost.
            self._wake.clear()
            if not self._uplink.cloud_reachable:
                await self._sleep()
                continue
            await self._resend_due()
            if self._clock() < self._paused_until:
                await self._sleep(self._paused_until - self._clock())
                continue
            room = self._window - len(self._in_flight)
            sent = await self._send_new(room) if room > 0 else 0
            if not sent:
                await self._sleep(self._next_due())

    async def _resend_due(self) -> None:
        now = self._clock()
        due = [e for e in self._in_flight.values() if e.resend_at <= now]
        for entry in sorted(due, key=lambda e: -e.item.priority):
            if entry.item.sample_id not in self._in_flight:
                continue  # its verdict came while we waited for the budget
            reason = "no_verdict" if entry.acked else "unanswered"
            if not await self._send(entry.item):
                return
            entry.sends += 1
            entry.acked = False
            entry.sent_at = self._clock()
            entry.resend_at = entry.sent_at + self._ack_timeout_s
            self._metrics.samples_resent.labels(reason).inc()

    async def _send_new(self, room: int) -> int:
        try:
            stats = await self._outbox.stats()
            order: Literal["priority", "newest_first", "oldest_first"] = (
                self._replay_order if stats.oldest_age_s > BACKLOG_AGE_S else "priority"
            )
            batch = await self._outbox.next_batch(room, order, exclude=set(self._in_flight))
        except OutboxError as err:
            self._outbox_error(err)
            await asyncio.sleep(OUTBOX_RETRY_S)
            return 0
        self._outbox_recovered()
        sent = 0
        for item in batch:
            if self._clock() < self._paused_until or not await self._send(item):
                break
            now = self._clock()
            self._in_flight[item.sample_id] = InFlight(item, now, now + self._ack_timeout_s)
            sent += 1
        self._metrics.samples_in_flight.set(len(self._in_flight))
        return sent

    async def _send(self, item: OutboxItem) -> bool:
        await self._bucket.take(len(item.payload), deadline=self._clock() + 3600)
        return self._uplink.cloud_reachable and self._uplink.send(item.sample_id, item.payload)

    async def _remove(self, sample_id: str) -> None:
        try:
            await self._outbox.remove(sample_id)
        except OutboxError as err:
            # The row stays and is sent again once the disk is back; the cloud answers with the verdict.
            self._outbox_error(err)
        else:
            self._outbox_recovered()

    def _outbox_error(self, err: OutboxError) -> None:
        self._metrics.outbox_errors.inc()
        if not self._outbox_failing:
            logger.error("outbox failing, samples wait in it: %s", err)
        self._outbox_failing = True

    def _outbox_recovered(self) -> None:
        if self._outbox_failing:
            logger.info("outbox %s works again", self._outbox.path)
        self._outbox_failing = False

    def _next_due(self) -> float:
        if not self._in_flight:
            return self._poll_s
        return max(0.0, min(e.resend_at for e in self._in_flight.values()) - self._clock())

    async def _sleep(self, at_most: float | None = None) -> None:
        timeout = self._poll_s if at_most is None else max(0.001, min(self._poll_s, at_most))
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set (gh-86296), and this loop must always stop when cancelled.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
