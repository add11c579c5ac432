"""The dispatcher alone: a real outbox file, an in-memory transport and a fake clock.

It owns what is in flight: a sample stays in the outbox until its verdict, the window counts samples
until their verdict, and every resend rule of protos/session.proto (cloud back, late ack, late
verdict, deferral, overload) is checked here without a network or a wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge.metrics import EdgeMetrics
from edge.outbox import Outbox, OutboxError
from edge.policy.settings import UplinkPolicy
from edge.uplink.dispatch import Dispatcher
from protos import sample_pb2, session_pb2

WAIT_S = 10.0


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class MemoryUplink:
    """Takes whatever it is given while `cloud_reachable`; remembers the order."""

    cloud_reachable: bool = True
    last_error: str = ""
    sent: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def send(self, sample_id: str, payload: bytes) -> bool:
        if not self.cloud_reachable:
            return False
        self.sent.append(sample_id)
        self.payloads.append(payload)
        return True

    def publish_event(self, event: dict[str, Any], snapshot: bytes | None = None) -> None:
        pass

    def announce(self, cameras: list[str], watched: list[str]) -> None:
        pass

    async def model_chunks(
        self, request: session_pb2.FetchModelRequest, timeout_s: float
    ) -> AsyncIterator[session_pb2.ModelChunk]:
        raise NotImplementedError("the memory uplink carries no models")
        yield session_pb2.ModelChunk()


def sample(sample_id: str, priority: float = 0.5) -> sample_pb2.Sample:
    pb = sample_pb2.Sample(sample_id=sample_id, edge_id="gw-1", camera_id="cam-1", priority=priority)
    pb.captured_at.GetCurrentTime()
    pb.image.jpeg = b"\xff\xd8" + bytes(200) + b"\xff\xd9"
    return pb


def counter(metrics: EdgeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def looked_again(dispatcher: Dispatcher, turns: int = 3) -> None:
    """Wait until the dispatcher's loop has run `turns` more times: what it would have sent, it has."""
    start = dispatcher.passes
    await until(lambda: dispatcher.passes >= start + turns, f"{turns} more dispatcher passes")


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` (the dispatcher runs on the same loop) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class Rig:
    outbox: Outbox
    uplink: MemoryUplink
    dispatcher: Dispatcher
    clock: Clock
    metrics: EdgeMetrics

    async def put(self, *samples: sample_pb2.Sample) -> None:
        for pb in samples:
            await self.outbox.put(pb)
        self.dispatcher.notify()

    async def held(self) -> int:
        return (await self.outbox.stats()).samples


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    metrics = EdgeMetrics()
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 30, max_age_s=86_400, metrics=metrics)
    await outbox.open()
    uplink = MemoryUplink()
    clock = Clock()
    policy = UplinkPolicy(budget_bytes_per_s=1 << 30, burst_bytes=1 << 30)
    dispatcher = Dispatcher(
        outbox, uplink, policy, metrics, window=3, ack_timeout_s=30, verdict_timeout_s=120, poll_s=0.005, clock=clock
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        yield Rig(outbox, uplink, dispatcher, clock, metrics)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()


def accepted(sample_id: str) -> session_pb2.Ack:
    return session_pb2.Ack(sample_id=sample_id, accepted=True)


async def test_an_accepted_ack_keeps_the_sample_and_its_verdict_removes_it(rig: Rig) -> None:
    pb = sample("s-1")
    await rig.put(pb)
    await until(lambda: rig.uplink.sent == ["s-1"], "the sample sent")
    assert rig.uplink.payloads == [pb.SerializeToString()]  # the stored bytes, as they are

    await rig.dispatcher.on_ack(accepted("s-1"))
    assert await rig.held() == 1
    assert rig.dispatcher.in_flight == 1

    rig.clock.now += 0.25
    answered = await rig.dispatcher.on_verdict("s-1")
    assert answered is not None and answered.item.sample() == pb
    assert answered.round_trip_s == pytest.approx(0.25) and answered.sends == 1
    assert await rig.held() == 0
    assert rig.dispatcher.in_flight == 0
    assert await rig.dispatcher.on_verdict("s-1") is None  # a second verdict is not ours


async def test_the_window_counts_samples_until_their_verdict_not_their_ack(rig: Rig) -> None:
    await rig.put(*(sample(f"s-{i}") for i in range(5)))
    await until(lambda: len(rig.uplink.sent) == 3, "a window of 3 sent")
    for sample_id in rig.uplink.sent:
        await rig.dispatcher.on_ack(accepted(sample_id))
    rig.dispatcher.notify()
    await looked_again(rig.dispatcher)
    assert len(rig.uplink.sent) == 3

    await rig.dispatcher.on_verdict(rig.uplink.sent[0])
    await until(lambda: len(rig.uplink.sent) == 4, "one more sent once a verdict freed the window")


async def test_when_the_cloud_comes_back_everything_in_flight_goes_again(rig: Rig) -> None:
    await rig.put(sample("a", 0.2), sample("b", 0.9))
    await until(lambda: sorted(rig.uplink.sent) == ["a", "b"], "both sent")
    await rig.dispatcher.on_ack(accepted("a"))
    rig.dispatcher.cloud_back()
    await until(lambda: len(rig.uplink.sent) == 4, "both sent again")
    assert rig.uplink.sent[2:] == ["b", "a"]  # most uncertain first
    assert counter(rig.metrics, "edgeglm_edge_samples_resent_total", reason="unanswered") == 2


async def test_a_late_verdict_and_a_late_ack_send_the_sample_again(rig: Rig) -> None:
    await rig.put(sample("s-1"))
    await until(lambda: rig.uplink.sent == ["s-1"], "sent")
    rig.clock.now += 29
    await looked_again(rig.dispatcher)
    assert rig.uplink.sent == ["s-1"]  # the ack is not late yet
    rig.clock.now += 2
    await until(lambda: len(rig.uplink.sent) == 2, "sent again when the ack is 30 s late")

    await rig.dispatcher.on_ack(accepted("s-1"))
    rig.clock.now += 119
    await looked_again(rig.dispatcher)
    assert len(rig.uplink.sent) == 2
    rig.clock.now += 2
    await until(lambda: len(rig.uplink.sent) == 3, "sent again when the verdict is 120 s late")
    assert counter(rig.metrics, "edgeglm_edge_samples_resent_total", reason="no_verdict") == 1
    rig.clock.now += 0.5
    answered = await rig.dispatcher.on_verdict("s-1")
    assert answered is not None and answered.sends == 3
    assert answered.round_trip_s == pytest.approx(0.5)  # from the send it answers, not the first one


async def test_overload_defers_the_sample_and_pauses_new_ones_until_retry_after(rig: Rig) -> None:
    await rig.put(sample("s-1"))
    await until(lambda: rig.uplink.sent == ["s-1"], "sent")
    overloaded = session_pb2.Ack(
        sample_id="s-1", accepted=False, code=session_pb2.SESSION_ERROR_CODE_OVERLOADED, retry_after_ms=2000
    )
    await rig.dispatcher.on_ack(overloaded)
    await rig.put(sample("s-2"))
    await looked_again(rig.dispatcher)
    assert rig.uplink.sent == ["s-1"]  # back-pressure: nothing new, nothing again
    assert await rig.held() == 2
    assert counter(rig.metrics, "edgeglm_edge_samples_deferred_total", reason="overloaded") == 1

    rig.clock.now += 2.5  # past retry_after with its jitter (at most +20 %)
    await until(lambda: sorted(rig.uplink.sent) == ["s-1", "s-1", "s-2"], "the deferred one and the new one sent")


async def test_a_sample_refused_for_good_leaves_the_outbox_counted(rig: Rig) -> None:
    await rig.put(sample("bad"))
    await until(lambda: rig.uplink.sent == ["bad"], "sent")
    refused = session_pb2.Ack(
        sample_id="bad", accepted=False, error="no image", code=session_pb2.SESSION_ERROR_CODE_INVALID_MESSAGE
    )
    await rig.dispatcher.on_ack(refused)
    assert await rig.held() == 0
    assert rig.dispatcher.in_flight == 0
    assert counter(rig.metrics, "edgeglm_edge_samples_dropped_total", reason="cloud_refused") == 1


async def test_nothing_is_sent_while_the_cloud_is_away_and_an_outbox_error_does_not_end_the_dispatcher(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.uplink.cloud_reachable = False
    await rig.put(sample("s-1"))
    await looked_again(rig.dispatcher)
    assert rig.uplink.sent == []

    real_next_batch = rig.outbox.next_batch
    failures = 0

    async def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        failures += 1
        raise OutboxError("outbox.sqlite: database or disk is full")

    monkeypatch.setattr(rig.outbox, "next_batch", failing)
    rig.uplink.cloud_reachable = True
    rig.dispatcher.notify()
    await until(lambda: failures >= 1 and rig.dispatcher.outbox_failing, "the failure seen")
    assert counter(rig.metrics, "edgeglm_edge_outbox_errors_total") >= 1

    monkeypatch.setattr(rig.outbox, "next_batch", real_next_batch)
    await until(lambda: rig.uplink.sent == ["s-1"], "sent once the outbox works again")
    assert not rig.dispatcher.outbox_failing


async def test_a_sample_put_while_the_dispatcher_reads_the_outbox_goes_without_waiting_for_the_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 30, max_age_s=86_400)
    await outbox.open()
    uplink, metrics = MemoryUplink(), EdgeMetrics()
    policy = UplinkPolicy(budget_bytes_per_s=1 << 30, burst_bytes=1 << 30)
    # A poll of an hour: only notify() can get the sample out within the test's wait.
    dispatcher = Dispatcher(outbox, uplink, policy, metrics, poll_s=3600)
    real_next_batch = outbox.next_batch
    reading, release = asyncio.Event(), asyncio.Event()

    async def slow_read(*args: Any, **kwargs: Any) -> Any:
        batch = await real_next_batch(*args, **kwargs)
        if not release.is_set():  # the first read: found nothing, and is still busy when the sample comes
            reading.set()
            await release.wait()
        return batch

    monkeypatch.setattr(outbox, "next_batch", slow_read)
    task = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.wait_for(reading.wait(), WAIT_S)
        await outbox.put(sample("s-1"))
        dispatcher.notify()
        release.set()
        await until(lambda: uplink.sent == ["s-1"], "the sample sent on the notify that came during a read")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()


async def test_a_deferred_sample_goes_again_at_its_retry_after_not_at_the_next_poll(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 30, max_age_s=86_400)
    await outbox.open()
    uplink, metrics = MemoryUplink(), EdgeMetrics()
    policy = UplinkPolicy(budget_bytes_per_s=1 << 30, burst_bytes=1 << 30)
    # A poll of an hour and a 30 s ack timeout: the loop sleeps 30 s after the send unless the deferral wakes it.
    dispatcher = Dispatcher(outbox, uplink, policy, metrics, ack_timeout_s=30, poll_s=3600)
    task = asyncio.create_task(dispatcher.run())
    try:
        await outbox.put(sample("s-1"))
        dispatcher.notify()
        await until(lambda: uplink.sent == ["s-1"], "sent")
        failed = session_pb2.Ack(
            sample_id="s-1", accepted=False, code=session_pb2.SESSION_ERROR_CODE_INTERNAL, retry_after_ms=50
        )
        await dispatcher.on_ack(failed)
        await until(lambda: uplink.sent == ["s-1", "s-1"], "the deferred sample sent again after 50 ms")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()
