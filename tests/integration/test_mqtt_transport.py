"""The MQTT transport end to end: a real mosquitto on a free port, an MqttUplink on the edge side and
an MqttBridge in front of a real SampleJudge (oracle backend on a generated clip, SQLite store).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.policy.signing import verify
from protos import policy_pb2, session_pb2, status_pb2, verdict_pb2
from tests.helpers.mqtt import EDGE, WAIT_S, bridge_config, cloud, edge, edge_config, samples
from tests.helpers.wait import wait_until

# MQTT's own tests: the transport fixture on MQTT only.
pytestmark = pytest.mark.parametrize("broker", ["mqtt"], indirect=True)

REPO = Path(__file__).resolve().parents[2]


async def test_samples_over_mqtt_get_an_ack_then_their_verdict(tmp_path: Path, clip: Path, broker: Any) -> None:
    sent = samples(clip, 3)
    async with cloud(tmp_path, clip, bridge_config(broker)) as replica, edge(edge_config(broker)) as gw:
        await wait_until(lambda: replica.bridge.connected, "the bridge to connect")
        assert gw.uplink is not None
        for sample in sent:
            await gw.submit(sample)
        await wait_until(lambda: len(gw.verdicts) == len(sent), "every verdict")
        await wait_until(gw.outbox_empty, "the outbox to empty")
        assert gw.accepted_ids() == gw.verdict_ids() == {s.sample_id for s in sent}
        assert {v.decision for v in gw.verdicts} == {verdict_pb2.DECISION_CONFIRMED}
        assert {v.backend for v in gw.verdicts} == {"oracle"}
        assert await replica.store.count() == len(sent)
        assert replica.counter("edgeglm_cloud_verdicts_sent_total", decision="confirmed") == len(sent)


async def test_the_fleet_status_follows_the_edge_over_mqtt(tmp_path: Path, clip: Path, broker: Any) -> None:
    async with cloud(tmp_path, clip, bridge_config(broker)) as replica:
        async with edge(edge_config(broker)):
            await wait_until(lambda: (r := replica.fleet.get(EDGE)) is not None and r.sessions == 1, "edge online")
            record = replica.fleet.get(EDGE)
            assert record is not None and record.site_id == "site-a"
        await wait_until(lambda: (r := replica.fleet.get(EDGE)) is not None and r.sessions == 0, "edge offline")
        record = replica.fleet.get(EDGE)
        assert record is not None and record.status is not None
        assert record.status.state == status_pb2.EDGE_STATE_OFFLINE


async def test_a_retained_policy_reaches_an_edge_that_connects_later(
    tmp_path: Path, clip: Path, broker: Any, observer_factory: Any
) -> None:
    async with cloud(tmp_path, clip, bridge_config(broker)) as replica:
        await wait_until(lambda: replica.bridge.connected, "the bridge to connect")
        async with edge(edge_config(broker)) as first:
            await wait_until(lambda: len(first.policies) >= 1, "the fleet policy")
            await wait_until(lambda: replica.fleet.get(EDGE) is not None, "the bridge to hear of the edge")
        fleet_policy = verify(first.policies[0], replica.public_key)
        assert fleet_policy.scope == policy_pb2.POLICY_SCOPE_FLEET
        # Changed while the edge is away; it comes back as a new client (replaced hardware), so no
        # session queued anything for it: only the retained message can bring the change.
        version = await replica.policy.set_edge(EDGE, {"uplink": {"jpeg_quality": 61}})
        async with edge(edge_config(broker, client_id="gw-1-replacement")) as later:
            await wait_until(lambda: len(later.policies) >= 1, "the retained edge policy")
            # Room for a (wrong) fleet policy to follow: the broker sends the retained one on the
            # edge's fleet subscription; an ack published after that is queued behind it, so once the
            # edge has handled the ack it has handled the fleet policy too.
            fleet_topic = "edgeglm/fleet/policy"
            await wait_until(lambda: broker.subscribed(fleet_topic, "gw-1-replacement"), "the fleet subscription")
            barrier = session_pb2.CloudMessage(ack=session_pb2.Ack(sample_id="barrier", accepted=True))
            await observer_factory().publish(f"edgeglm/{EDGE}/verdicts", barrier.SerializeToString())
            await wait_until(lambda: "barrier" in later.accepted_ids(), "the edge to handle what came before the ack")
        offered = [verify(signed, replica.public_key) for signed in later.policies]
        # The edge's own policy arrives and is the newest offered. MQTT orders messages within one
        # subscription only, so the retained fleet policy may come first under load; when it does it is
        # older, and the edge's policy store refuses it once the edge's own is in force.
        assert (offered[-1].version, offered[-1].scope, offered[-1].scope_id) == (
            version,
            policy_pb2.POLICY_SCOPE_EDGE,
            EDGE,
        )
        assert all(p.version < version for p in offered[:-1])
        assert version > fleet_policy.version


async def test_no_sample_is_lost_when_the_broker_restarts(tmp_path: Path, clip: Path, broker: Any) -> None:
    before, during = samples(clip, 6, "before"), samples(clip, 4, "during")
    config = bridge_config(broker)
    # Verdicts take a while, so some are being made while the broker is down.
    async with cloud(tmp_path, clip, config, delay_ms=300) as replica, edge(edge_config(broker)) as gw:
        uplink = gw.uplink
        assert uplink is not None
        await wait_until(lambda: replica.bridge.connected, "the bridge to connect")
        for sample in before:
            await gw.submit(sample)
        await wait_until(lambda: len(gw.acks) >= 1, "a first ack")
        broker.restart()
        await wait_until(lambda: not uplink.connected or len(gw.verdict_ids()) == len(before), "the edge to notice")
        for sample in during:  # submitted whether or not the edge noticed yet
            await gw.submit(sample)
        wanted = {s.sample_id for s in before + during}
        await wait_until(lambda: gw.verdict_ids() == wanted, "every verdict after the restart", 40)
        await wait_until(gw.outbox_empty, "the outbox to empty")
        assert await replica.store.count() == len(wanted)
        # Redelivered samples were answered from the store, not judged twice.
        assert replica.counter("edgeglm_inference_request_success_total", backend="oracle") == len(wanted)


async def test_samples_mined_before_any_bridge_listens_wait_and_reach_it_once_it_does(
    tmp_path: Path, clip: Path, broker: Any
) -> None:
    sent = samples(clip, 3)
    async with edge(edge_config(broker), ack_timeout_s=1) as gw:
        assert gw.uplink is not None
        for sample in sent:
            await gw.submit(sample)
        assert gw.dispatcher is not None
        looked = gw.dispatcher.passes + 3
        await wait_until(lambda: gw.dispatcher is not None and gw.dispatcher.passes >= looked, "the dispatcher to look")
        # No bridge says it is online: the samples wait in the outbox, none goes to a broker nobody reads.
        assert gw.counter("edgeglm_edge_samples_sent_total") == 0
        assert await gw.pending() == len(sent)
        async with cloud(tmp_path, clip, bridge_config(broker)) as replica:
            await wait_until(lambda: gw.verdict_ids() == {s.sample_id for s in sent}, "the republished samples")
            assert await replica.store.count() == len(sent)


async def test_samples_submitted_before_the_broker_is_up_are_sent_when_it_is(
    tmp_path: Path, clip: Path, broker: Any
) -> None:
    sent = samples(clip, 3)
    broker.stop()
    async with edge(edge_config(broker), connected=False) as gw:
        uplink = gw.uplink
        assert uplink is not None
        for sample in sent:
            await gw.submit(sample)
        await wait_until(lambda: "cannot reach broker" in uplink.last_error, "a failed connect")
        assert (uplink.connected, await gw.pending()) == (False, len(sent))
        broker.start()
        async with cloud(tmp_path, clip, bridge_config(broker)):
            await wait_until(lambda: gw.verdict_ids() == {s.sample_id for s in sent}, "the verdicts")


async def test_a_clean_stop_leaves_the_status_offline(broker: Any, observer_factory: Any) -> None:
    watcher = observer_factory(f"edgeglm/{EDGE}/status")
    async with edge(edge_config(broker)):
        online = await watcher.status_until(status_pb2.EDGE_STATE_ONLINE)
        assert (online.edge_id, online.site_id) == (EDGE, "site-a")
    await watcher.status_until(status_pb2.EDGE_STATE_OFFLINE)
    late = observer_factory(f"edgeglm/{EDGE}/status")  # a newcomer reads the retained status
    assert (await late.next_status()).state == status_pb2.EDGE_STATE_OFFLINE


DYING_EDGE = """
import asyncio, sys
from edge.metrics import EdgeMetrics
from edge.uplink.base import UplinkHandlers
from edge.config import MqttUplinkConfig
from edge.uplink.mqtt import MqttUplink
from protos import session_pb2, status_pb2

async def ignore(_):
    pass

async def main():
    hello = lambda: session_pb2.Hello(edge_id="gw-doomed", site_id="site-a")
    status = lambda: status_pb2.EdgeStatus(edge_id="gw-doomed", state=status_pb2.EDGE_STATE_ONLINE)
    config = MqttUplinkConfig(host=sys.argv[1], port=int(sys.argv[2]), keepalive_s=5)
    handlers = UplinkHandlers(hello, status, ignore, ignore, ignore, lambda: None, lambda *_: None)
    uplink = MqttUplink(config, handlers, EdgeMetrics())
    await uplink.start()
    await asyncio.sleep(120)

asyncio.run(main())
"""


async def test_the_last_will_says_offline_when_the_edge_process_dies(broker: Any, observer_factory: Any) -> None:
    watcher = observer_factory("edgeglm/gw-doomed/status")
    process = subprocess.Popen(  # noqa: ASYNC220 - a child to SIGKILL, not work to wait for
        [sys.executable, "-c", DYING_EDGE, broker.host, str(broker.port)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        online = await watcher.status_until(status_pb2.EDGE_STATE_ONLINE)
        assert online.edge_id == "gw-doomed"
        process.send_signal(signal.SIGKILL)
        offline = await watcher.status_until(status_pb2.EDGE_STATE_OFFLINE)
        assert (offline.edge_id, offline.site_id) == ("gw-doomed", "site-a")
    finally:
        process.kill()
        process.wait(WAIT_S)


async def test_home_assistant_availability_goes_offline_when_the_edge_process_dies(
    tmp_path: Path, clip: Path, broker: Any, observer_factory: Any
) -> None:
    """The edge says online itself; its death is its last will on the status topic, which the bridge
    turns into "offline" on the availability topic Home Assistant's sensors follow."""
    watcher = observer_factory("edgeglm/gw-doomed/availability")
    await watcher.subscribed()
    async with cloud(tmp_path, clip, bridge_config(broker)):
        process = subprocess.Popen(  # noqa: ASYNC220 - a child to SIGKILL, not work to wait for
            [sys.executable, "-c", DYING_EDGE, broker.host, str(broker.port)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            online = await asyncio.to_thread(watcher.messages.get, True, WAIT_S)
            assert bytes(online.payload) == b"online"
            process.send_signal(signal.SIGKILL)
            offline = await asyncio.to_thread(watcher.messages.get, True, WAIT_S)
            assert (bytes(offline.payload), offline.retain) == (
                b"offline",
                False,
            )  # live delivery of a retained publish
        finally:
            process.kill()
            process.wait(WAIT_S)


async def test_local_events_are_published_as_json_and_snapshots_retained_per_label(
    broker: Any, observer_factory: Any
) -> None:
    watcher = observer_factory(f"edgeglm/{EDGE}/events", f"edgeglm/{EDGE}/cam0/cat/snapshot")
    await watcher.subscribed()
    event = {"schema": 1, "type": "new", "id": f"{EDGE}/cam0/3", "camera": "cam0", "label": "cat", "score": 0.91}
    async with edge(edge_config(broker)) as recorder:
        assert recorder.uplink is not None
        recorder.uplink.publish_event(event, b"\xff\xd8snapshot")
        first = await asyncio.to_thread(watcher.messages.get, True, WAIT_S)
        second = await asyncio.to_thread(watcher.messages.get, True, WAIT_S)
    by_topic = {m.topic: m for m in (first, second)}
    message = by_topic[f"edgeglm/{EDGE}/events"]
    assert json.loads(bytes(message.payload)) == event
    assert not message.retain
    snapshot = by_topic[f"edgeglm/{EDGE}/cam0/cat/snapshot"]
    assert bytes(snapshot.payload) == b"\xff\xd8snapshot"
