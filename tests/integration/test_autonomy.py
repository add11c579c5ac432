"""Store-and-forward over gRPC: the edge keeps working without the cloud and loses nothing.

A real cloud service (oracle backend) is stopped and started again on the same port and SQLite
store while a real agent plays a looping clip in real time.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from cloud.service import CloudService
from edge.agent import EdgeAgent
from edge.gate.frame_gate import GateResult
from edge.questions import HeldFrame
from edge.sources.frame import Frame
from edge.status import counter_total
from edge.track.book import AskRequest
from tests.helpers.agents import cloud_config, edge_config, every_frame, make_agent_clip
from tests.helpers.broker import MosquittoBroker, free_port, running_broker
from tests.helpers.policy_keys import generate_keypair
from tests.helpers.wait import wait_until


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_agent_clip(tmp_path_factory.mktemp("clip"))


async def test_samples_mined_during_an_outage_reach_the_cloud_once_it_returns(
    tmp_path: Path, clip: Path, broker: MosquittoBroker | None
) -> None:
    port = free_port()
    settings = every_frame()
    config = cloud_config(tmp_path, clip, settings, broker)
    config = config.model_copy(update={"server": config.server.model_copy(update={"port": port})})
    service = CloudService(config)
    await service.start()
    agent = EdgeAgent(
        edge_config(tmp_path, clip, port, "gw-out", loop=True, initial=settings, broker=broker, ask="per_frame")
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_until(lambda: counter_total(agent.metrics.verdicts) >= 3, "verdicts while the cloud is up")
        assert agent._readiness()[1] == "online"
        await service.stop()
        # Over MQTT the broker stays up: the cloud's retained presence (and its last will) tells the edge.
        await wait_until(lambda: not agent._cloud_reachable(), "the agent noticing the outage")
        assert agent._readiness()[0], "an autonomous edge stays ready"
        assert agent._readiness()[1] == "autonomous"
        mined_before = counter_total(agent.metrics.mined)
        events_before = counter_total(agent.metrics.local_events)
        await wait_until(lambda: counter_total(agent.metrics.mined) >= mined_before + 5, "mining during the outage")
        assert counter_total(agent.metrics.decisions_without_cloud) > 0
        assert (await agent.outbox.stats()).samples > 0
        service = CloudService(config)
        await service.start()
        await wait_until(agent._cloud_reachable, "the agent reconnecting")
        assert agent._readiness()[1] == "online"
        stop.set()
        await asyncio.wait_for(task, timeout=60)
        assert counter_total(agent.metrics.local_events) >= events_before
        stored = await service.store.count()
    finally:
        stop.set()
        await service.stop()
    assert agent._outbox_samples == 0
    # Every sample the agent mined, before, during and after the outage, is in the cloud's store once.
    assert stored == counter_total(agent.metrics.mined)


async def test_a_full_outbox_evicts_and_the_agent_keeps_running(tmp_path: Path, clip: Path) -> None:
    generate_keypair(tmp_path / "keys", "policy-signing")
    config = edge_config(tmp_path, clip, free_port(), "gw-full", initial=every_frame(), ask="per_frame")
    config = config.model_copy(
        update={
            "outbox": config.outbox.model_copy(update={"max_bytes": 1 << 20}),
            "pipeline": config.pipeline.model_copy(update={"drain_deadline_s": 1}),
        }
    )
    agent = EdgeAgent(config)
    await asyncio.wait_for(agent.run(asyncio.Event()), timeout=60)
    evicted = agent.metrics.samples_dropped.labels("outbox_evicted")._value.get()
    assert counter_total(agent.metrics.frames_read) == 40
    assert evicted > 0
    assert agent._outbox_samples + evicted == counter_total(agent.metrics.mined)


@pytest.mark.slow
async def test_replay_after_reconnect_stays_within_the_byte_budget(
    tmp_path: Path, clip: Path, broker: MosquittoBroker | None
) -> None:
    rate = 200_000
    port = free_port()
    settings = every_frame(rate)
    config = cloud_config(tmp_path, clip, settings, broker)
    config = config.model_copy(update={"server": config.server.model_copy(update={"port": port})})
    generate_keypair(tmp_path / "keys", "policy-signing")
    agent = EdgeAgent(edge_config(tmp_path, clip, port, "gw-budget", initial=settings, broker=broker, ask="per_frame"))
    await asyncio.wait_for(agent.run(asyncio.Event()), timeout=60)  # no cloud: everything stays in the outbox
    backlog = agent._outbox_samples
    assert backlog >= 5
    service = CloudService(config)
    await service.start()
    try:
        # Replay only: the camera folder is gone, so no new frames (the source keeps retrying it).
        restarted_config = edge_config(
            tmp_path, tmp_path / "gone", port, "gw-budget", initial=settings, broker=broker, ask="per_frame"
        )
        restarted = EdgeAgent(
            restarted_config.model_copy(
                update={"pipeline": restarted_config.pipeline.model_copy(update={"drain_deadline_s": 5})}
            )
        )
        stop = asyncio.Event()
        task = asyncio.create_task(restarted.run(stop))
        await wait_until(restarted._cloud_reachable, "connection")
        started = time.monotonic()
        await wait_until(lambda: counter_total(restarted.metrics.acks) >= backlog, "the backlog acknowledged")
        elapsed = time.monotonic() - started
        sent_bytes = counter_total(restarted.metrics.uplink_bytes)
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    finally:
        await service.stop()
    largest_sample = 200_000  # a 640x480 JPEG at quality 80 is well under this
    assert sent_bytes <= rate * elapsed + rate + largest_sample


async def test_no_sample_is_lost_when_the_broker_restarts_mid_run(tmp_path: Path, clip: Path) -> None:
    settings = every_frame()
    with running_broker(tmp_path / "broker") as mqtt_broker:
        config = cloud_config(tmp_path, clip, settings, mqtt_broker)
        service = CloudService(config)
        await service.start()
        agent = EdgeAgent(
            edge_config(tmp_path, clip, 1, "gw-mqtt", loop=True, initial=settings, broker=mqtt_broker, ask="per_frame")
        )
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await wait_until(lambda: counter_total(agent.metrics.verdicts) >= 3, "verdicts before the restart")
            mqtt_broker.restart()
            mined_at_restart = counter_total(agent.metrics.mined)
            await wait_until(
                lambda: counter_total(agent.metrics.mined) >= mined_at_restart + 5, "mining after the restart"
            )
            await wait_until(agent._cloud_reachable, "the cloud reachable again")
            stop.set()
            await asyncio.wait_for(task, timeout=60)
            stored = await service.store.count()
        finally:
            stop.set()
            await service.stop()
    assert agent._outbox_samples == 0
    assert stored == counter_total(agent.metrics.mined)


async def test_a_question_cancelled_half_way_by_a_shutdown_still_reaches_the_outbox(tmp_path: Path, clip: Path) -> None:
    # The shutdown cancels the camera and detect tasks; one of them may be encoding a question at that
    # moment. Counted as mined, the sample must end in the outbox (or counted as dropped), never neither.
    generate_keypair(tmp_path / "keys", "policy-signing")
    config = edge_config(tmp_path, clip, free_port(), "gw-cancel", initial=every_frame(), ask="per_frame")
    agent = EdgeAgent(config)
    await agent.outbox.open()
    try:
        image = np.full((480, 640, 3), 90, np.uint8)
        held = HeldFrame(Frame("cam0", 7, time.time(), image), [], GateResult(True, 0.2, (10, 10, 200, 200)))
        ask = AskRequest("cam0", None, held, (), "motion_without_detection", "test", 0.5)
        sending = asyncio.create_task(agent._send(ask))
        await asyncio.sleep(0)  # one turn of the loop: the task is now awaiting the encode in a thread
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        assert counter_total(agent.metrics.mined) == 1
        assert (await agent.outbox.stats()).samples == 1
    finally:
        await agent.outbox.close()


async def test_a_sample_names_the_model_that_detected_it_even_after_a_swap(tmp_path: Path, clip: Path) -> None:
    # A track's question may leave after its window closed, and a new model may have been swapped in
    # meanwhile: the sample is the old model's finding, and the cloud's rollout rule counts it as such.
    generate_keypair(tmp_path / "keys", "policy-signing")
    agent = EdgeAgent(edge_config(tmp_path, clip, free_port(), "gw-credit", initial=every_frame()))
    await agent.outbox.open()
    try:
        image = np.full((480, 640, 3), 90, np.uint8)
        gate = GateResult(True, 0.2, (10, 10, 200, 200))
        held = HeldFrame(Frame("cam0", 7, time.time(), image), [], gate, ("yolo-edge", "1"))
        assert (agent.models.running.name, agent.models.running.version) != ("yolo-edge", "1")  # running now
        ask = AskRequest("cam0", None, held, (), "motion_without_detection", "test", 0.5)
        assert await agent._send(ask)
        (item,) = await agent.outbox.next_batch(5)
        sample = item.sample()
    finally:
        await agent.outbox.close()
    assert (sample.edge_model_name, sample.edge_model_version) == ("yolo-edge", "1")


@pytest.mark.parametrize("lossless", [False, True])
async def test_every_frame_read_is_detected_gated_or_counted_when_a_looping_camera_stops(
    tmp_path: Path, clip: Path, lossless: bool
) -> None:
    # Stopped mid-stream (a looping camera never ends by itself): the frames read and still queued, or
    # cut in the middle of the gate, are counted; none goes missing from the books.
    generate_keypair(tmp_path / "keys", "policy-signing")
    config = edge_config(tmp_path, clip, free_port(), "gw-books", loop=True)
    camera = config.cameras[0].model_copy(update={"realtime": not lossless})
    agent = EdgeAgent(config.model_copy(update={"cameras": [camera]}))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await wait_until(lambda: counter_total(agent.metrics.frames_read) >= 30, "frames read")
    stop.set()
    await asyncio.wait_for(task, timeout=60)
    done = json.loads((tmp_path / "gw-books" / "summary.json").read_text())
    assert done["frames_read"] >= 30
    assert done["frames_read"] == done["frames_detected"] + done["frames_gated"] + done["frames_dropped"], done
