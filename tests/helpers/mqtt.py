"""The MQTT transport's two ends for tests, on a test broker: a cloud replica (a real IngestCore with
the oracle backend on a clip, behind a started MqttBridge) and an edge (an MqttUplink fed by the agent's
real outbox and dispatcher, with handlers that record what comes down), their configs, and an observer
(a plain paho client) that records or publishes.
"""

from __future__ import annotations

import asyncio
import queue
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from cloud.backends import build_backend
from cloud.batcher import DynamicBatcher
from cloud.bridge import MqttBridgeConfig
from cloud.bridge.bridge import MqttBridge
from cloud.ingest import IngestCore
from cloud.metrics import CloudMetrics
from cloud.policy import PolicyEngine, PolicySigner
from cloud.server import FleetStatus
from cloud.store import VerdictStore
from edge.config import MqttUplinkConfig
from edge.metrics import EdgeMetrics
from edge.outbox import Outbox
from edge.policy.settings import UplinkPolicy
from edge.uplink.base import UplinkHandlers
from edge.uplink.dispatch import Dispatcher
from edge.uplink.mqtt import MqttUplink
from protos import policy_pb2, sample_pb2, session_pb2, status_pb2, verdict_pb2
from tests.helpers.broker import MosquittoBroker
from tests.helpers.cloud import busy_frames, make_config, make_sample
from tests.helpers.wait import wait_until

WAIT_S = 20.0
EDGE = "gw-1"


@dataclass
class Cloud:
    """One cloud replica's parts: judge, policy engine, store, metrics and its bridge."""

    bridge: MqttBridge
    ingest: IngestCore
    policy: PolicyEngine
    store: VerdictStore
    metrics: CloudMetrics
    fleet: FleetStatus
    public_key: Ed25519PublicKey

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def bridge_config(broker: MosquittoBroker, **fields: Any) -> MqttBridgeConfig:
    """A bridge config on the test broker (fast reconnects)."""
    base: dict[str, Any] = {"enabled": True, "host": broker.host, "port": broker.port, "reconnect_backoff_max_s": 1}
    return MqttBridgeConfig.model_validate(base | fields)


@asynccontextmanager
async def cloud(
    folder: Path, clip: Path, config: MqttBridgeConfig, delay_ms: float = 5, known_edges: tuple[str, ...] = ()
) -> AsyncIterator[Cloud]:
    """A judge with the oracle backend on `clip` behind a started bridge; everything stopped on exit."""
    cloud_config = make_config(folder, clip, backend={"delay_ms": delay_ms})
    metrics = CloudMetrics()
    store = VerdictStore(cloud_config.store.path)
    await store.open()
    backend = build_backend(cloud_config.backend)
    batcher = DynamicBatcher(backend, cloud_config.batcher, metrics)
    await batcher.start()
    signer = PolicySigner.ephemeral()
    policy = PolicyEngine(signer, folder / "state" / "policy-state.json", metrics)
    ingest = IngestCore(store, batcher, backend, metrics)
    fleet = FleetStatus()
    bridge = MqttBridge(config, ingest, policy, metrics, fleet=fleet, known_edges=known_edges)
    await bridge.start()
    try:
        yield Cloud(bridge, ingest, policy, store, metrics, fleet, signer.public_key)
    finally:
        await asyncio.wait_for(bridge.stop(time.monotonic() + 5), WAIT_S)
        await batcher.stop(5)
        await ingest.drain(time.monotonic() + 5)
        await store.close()


@dataclass
class Edge:
    """An MqttUplink fed by a real outbox and dispatcher, with handlers that record what comes down."""

    edge_id: str
    site_id: str = "site-a"
    acks: list[session_pb2.Ack] = field(default_factory=list)
    verdicts: list[verdict_pb2.Verdict] = field(default_factory=list)
    policies: list[policy_pb2.SignedPolicy] = field(default_factory=list)
    uplink: MqttUplink | None = None
    outbox: Outbox | None = None
    dispatcher: Dispatcher | None = None
    metrics: EdgeMetrics = field(default_factory=EdgeMetrics)

    def handlers(self) -> UplinkHandlers:
        # Recorded once the dispatcher has dealt with it: a test that saw it sees its effect too.
        async def on_ack(ack: session_pb2.Ack) -> None:
            assert self.dispatcher is not None
            await self.dispatcher.on_ack(ack)
            self.acks.append(ack)

        async def on_verdict(verdict: verdict_pb2.Verdict) -> None:
            assert self.dispatcher is not None
            await self.dispatcher.on_verdict(verdict.sample_id)
            self.verdicts.append(verdict)

        async def on_policy(signed: policy_pb2.SignedPolicy) -> None:
            self.policies.append(signed)

        def on_cloud_back() -> None:
            assert self.dispatcher is not None
            self.dispatcher.cloud_back()

        def on_deferred(sample_id: str, after_s: float, reason: str) -> None:
            assert self.dispatcher is not None
            self.dispatcher.deferred(sample_id, after_s, reason)

        return UplinkHandlers(self.hello, self.status, on_ack, on_verdict, on_policy, on_cloud_back, on_deferred)

    async def submit(self, sample: sample_pb2.Sample) -> None:
        """Into the outbox, as the agent does: the dispatcher sends it when a cloud is there."""
        assert self.outbox is not None and self.dispatcher is not None
        await self.outbox.put(sample)
        self.dispatcher.notify()

    async def pending(self) -> int:
        """Samples in the outbox (waiting for their verdict)."""
        assert self.outbox is not None
        return (await self.outbox.stats()).samples

    async def outbox_empty(self) -> bool:
        """Whether every sample got its verdict (or was refused for good)."""
        return await self.pending() == 0

    def counter(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def hello(self) -> session_pb2.Hello:
        return session_pb2.Hello(edge_id=self.edge_id, site_id=self.site_id)

    def status(self) -> status_pb2.EdgeStatus:
        online = self.uplink is not None and self.uplink.connected
        state = status_pb2.EDGE_STATE_ONLINE if online else status_pb2.EDGE_STATE_AUTONOMOUS
        return status_pb2.EdgeStatus(edge_id=self.edge_id, site_id=self.site_id, state=state)

    def verdict_ids(self) -> set[str]:
        return {verdict.sample_id for verdict in self.verdicts}

    def accepted_ids(self) -> set[str]:
        return {ack.sample_id for ack in self.acks if ack.accepted}


def edge_config(broker: MosquittoBroker, **fields: Any) -> MqttUplinkConfig:
    """An uplink config on the test broker (fast reconnects and heartbeats)."""
    base: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": 5,
        "reconnect_backoff_max_s": 1,
        "heartbeat_interval_s": 0.5,
    }
    return MqttUplinkConfig.model_validate(base | fields)


@asynccontextmanager
async def edge(
    config: MqttUplinkConfig, edge_id: str = EDGE, connected: bool = True, ack_timeout_s: float = 30.0
) -> AsyncIterator[Edge]:
    """A started uplink (connected to the broker unless told otherwise) and its dispatcher, stopped on exit."""
    recorder = Edge(edge_id)
    uplink = MqttUplink(config, recorder.handlers(), recorder.metrics)
    with tempfile.TemporaryDirectory(prefix="edge-outbox-") as folder:
        outbox = Outbox(Path(folder) / "outbox.sqlite", max_bytes=1 << 30, max_age_s=86_400, metrics=recorder.metrics)
        await outbox.open()
        policy = UplinkPolicy(budget_bytes_per_s=1 << 30, burst_bytes=1 << 30)
        dispatcher = Dispatcher(outbox, uplink, policy, recorder.metrics, ack_timeout_s=ack_timeout_s)
        recorder.uplink, recorder.outbox, recorder.dispatcher = uplink, outbox, dispatcher
        await uplink.start()
        dispatching = asyncio.create_task(dispatcher.run())
        try:
            if connected:
                await wait_until(lambda: uplink.connected, f"edge {edge_id} to connect")
            yield recorder
        finally:
            dispatching.cancel()
            await asyncio.gather(dispatching, return_exceptions=True)
            await asyncio.wait_for(uplink.stop(), WAIT_S)
            await outbox.close()


class Observer:
    """A plain paho client (not the project's code) that records what is published on some topics."""

    def __init__(self, broker: MosquittoBroker, *topics: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = lambda _client, _userdata, message: self.messages.put(message)
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        if topics:
            self._client.on_connect = lambda client, *_: client.subscribe([(topic, 1) for topic in topics])
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    async def subscribed(self, timeout_s: float = WAIT_S) -> None:
        """Return once the broker acknowledged the subscription (SUBACK): what is published after it reaches us."""
        if not await asyncio.to_thread(self._subscribed.wait, timeout_s):
            pytest.fail(f"the observer's subscription was not acknowledged within {timeout_s:g} s")

    async def next_status(self, timeout_s: float = WAIT_S) -> status_pb2.EdgeStatus:
        message = await asyncio.to_thread(self.messages.get, True, timeout_s)
        return status_pb2.EdgeStatus.FromString(bytes(message.payload))

    async def status_until(self, state: int, timeout_s: float = WAIT_S) -> status_pb2.EdgeStatus:
        """The first status in `state` (older ones skipped); queue.Empty after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = await self.next_status(max(0.01, deadline - time.monotonic()))
            if status.state == state:
                return status

    async def publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1)
        await asyncio.to_thread(info.wait_for_publish, WAIT_S)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._client._reset_sockets()  # paho closes its wake-up socket pair only in __del__


def samples(clip: Path, count: int, prefix: str = "s", edge_id: str = EDGE) -> list[sample_pb2.Sample]:
    """`count` samples of busy frames (cycling through them), with unique ids."""
    frames = busy_frames(clip)
    return [make_sample(clip, frames[i % len(frames)], f"{prefix}-{i}", edge_id=edge_id) for i in range(count)]


def quiet_handlers(edge_id: str) -> UplinkHandlers:
    """What an uplink hands back, for an edge that does nothing with it (a bare uplink under test)."""

    async def nothing(*_: object) -> None:
        return None

    return UplinkHandlers(
        hello=lambda: session_pb2.Hello(edge_id=edge_id),
        status=lambda: status_pb2.EdgeStatus(edge_id=edge_id),
        on_ack=nothing,
        on_verdict=nothing,
        on_policy=nothing,
        on_cloud_back=lambda: None,
        on_deferred=lambda *_: None,
    )
