"""The cloud's MQTT bridge against a real mosquitto: share groups, bad input, allow-list, shutdown;
and the edge uplink's own bound.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from protos import sample_pb2
from tests.helpers.mqtt import EDGE, bridge_config, cloud, edge, edge_config, samples
from tests.helpers.wait import wait_until

# MQTT's own tests: the transport fixture on MQTT only.
pytestmark = pytest.mark.parametrize("broker", ["mqtt"], indirect=True)


async def test_two_bridges_in_one_share_group_split_the_samples(tmp_path: Path, clip: Path, broker: Any) -> None:
    sent = samples(clip, 20)
    first, second = bridge_config(broker, client_id="replica-a"), bridge_config(broker, client_id="replica-b")
    async with (
        cloud(tmp_path / "a", clip, first) as replica_a,
        cloud(tmp_path / "b", clip, second) as replica_b,
        edge(edge_config(broker)) as gw,
    ):
        await wait_until(lambda: replica_a.bridge.connected and replica_b.bridge.connected, "both bridges")
        shared = f"$share/{first.share_group}/{first.topic_prefix}/+/samples"
        await wait_until(
            lambda: all(broker.subscribed(shared, c.effective_client_id()) for c in (first, second)),
            "both bridges' share-group subscriptions",
        )
        assert gw.uplink is not None
        for sample in sent:
            await gw.submit(sample)
        await wait_until(lambda: gw.verdict_ids() == {s.sample_id for s in sent}, "every verdict")
        judged = [await replica.store.count() for replica in (replica_a, replica_b)]
        received = [
            sum(replica.counter("edgeglm_cloud_samples_received_total", transport=t) for t in ("grpc", "mqtt"))
            for replica in (replica_a, replica_b)
        ]
    assert sum(judged) == len(sent), judged
    assert min(judged) > 0, f"one replica got nothing: {judged}"
    assert received == judged  # each sample went to one replica only


async def test_malformed_messages_are_counted_and_dropped_and_the_bridge_goes_on(
    tmp_path: Path, clip: Path, broker: Any, observer_factory: Any
) -> None:
    good = samples(clip, 1, "good")[0]
    liar = samples(clip, 1, "liar", edge_id="gw-other")[0]
    nameless = sample_pb2.Sample(edge_id=EDGE)
    publisher = observer_factory()
    async with cloud(tmp_path, clip, bridge_config(broker)) as replica, edge(edge_config(broker)) as gw:
        await wait_until(lambda: replica.bridge.connected, "the bridge to connect")
        await publisher.publish(f"edgeglm/{EDGE}/samples", b"\xff\x00 not a protobuf")
        await publisher.publish(f"edgeglm/{EDGE}/samples", liar.SerializeToString())
        await publisher.publish(f"edgeglm/{EDGE}/samples", nameless.SerializeToString())
        await publisher.publish("edgeglm/gw-9/status", b"\xff\x00 not a status")
        assert gw.uplink is not None
        await gw.submit(good)
        await wait_until(lambda: gw.verdict_ids() == {good.sample_id}, "the good sample's verdict")
        await wait_until(lambda: len([a for a in gw.acks if not a.accepted]) == 2, "two refusals")
        assert replica.counter("edgeglm_cloud_bad_messages_total", reason="malformed") == 4
        refused = {ack.sample_id: ack.error for ack in gw.acks if not ack.accepted}
        assert set(refused) == {liar.sample_id, ""}
        assert "gw-other" in refused[liar.sample_id]
        assert await replica.store.count() == 1


async def test_an_edge_missing_from_known_edges_is_refused(tmp_path: Path, clip: Path, broker: Any) -> None:
    stranger = samples(clip, 1, "stranger", edge_id="gw-stranger")[0]
    config = bridge_config(broker)
    async with (
        cloud(tmp_path, clip, config, known_edges=(EDGE,)) as replica,
        edge(edge_config(broker), edge_id="gw-stranger") as gw,
    ):
        await wait_until(lambda: replica.bridge.connected, "the bridge to connect")
        assert gw.uplink is not None
        await gw.submit(stranger)
        await wait_until(lambda: len(gw.acks) == 1, "the refusal")
        assert not gw.acks[0].accepted and "known_edges" in gw.acks[0].error
        assert await gw.pending() == 0  # refused samples leave the outbox: they are not resent
        assert gw.policies == [] or all(p.policy for p in gw.policies)
        assert replica.counter("edgeglm_cloud_bad_messages_total", reason="unknown_edge") >= 1
        assert await replica.store.count() == 0


async def test_stopping_the_bridge_still_answers_the_samples_in_hand(tmp_path: Path, clip: Path, broker: Any) -> None:
    sent = samples(clip, 2)
    async with edge(edge_config(broker)) as gw:
        assert gw.uplink is not None
        async with cloud(tmp_path, clip, bridge_config(broker), delay_ms=400) as replica:
            await wait_until(lambda: replica.bridge.connected, "the bridge to connect")
            for sample in sent:
                await gw.submit(sample)
            await wait_until(lambda: replica.bridge.in_flight == len(sent), "the samples to be in hand")
            await replica.bridge.stop(time.monotonic() + 10)
            assert replica.bridge.in_flight == 0
        await wait_until(lambda: gw.verdict_ids() == {s.sample_id for s in sent}, "the verdicts owed")


async def test_a_sample_larger_than_the_limit_is_dropped_counted_and_the_bridge_goes_on(
    tmp_path: Path, clip: Path, broker: Any, observer_factory: Any
) -> None:
    """MQTT has no gRPC message limit of its own: the bridge applies the same one before parsing."""
    good = samples(clip, 1, "good")[0]
    huge = samples(clip, 1, "huge")[0]
    huge.image.jpeg += b"\x00" * (256 << 10)
    publisher = observer_factory()
    config = bridge_config(broker, max_message_bytes=160 << 10)  # the good sample is about 80 kB
    async with cloud(tmp_path, clip, config) as replica, edge(edge_config(broker)) as gw:
        await wait_until(lambda: replica.bridge.connected, "the bridge to connect")
        await publisher.publish(f"edgeglm/{EDGE}/samples", huge.SerializeToString())
        assert gw.uplink is not None
        await gw.submit(good)
        await wait_until(lambda: gw.verdict_ids() == {good.sample_id}, "the good sample's verdict")
        await wait_until(
            lambda: replica.counter("edgeglm_cloud_bad_messages_total", reason="oversized") == 1, "the oversized count"
        )
        assert await replica.store.count() == 1
