"""The uplink over MQTT 5: the role of the gRPC uplink, through a broker (topics under `edgeglm/`).

- `{edge}/samples` up, QoS 1: one protobuf Sample per message.
- `{edge}/verdicts` down, QoS 1: one session CloudMessage per message, the envelope of the gRPC
  stream: an Ack, a Verdict, or a SessionError (meanings in protos/session.proto).
- `{edge}/policy` and `fleet/policy` down, retained: a SignedPolicy. The cloud keeps `{edge}/policy`
  current for every edge it has heard from; `fleet/policy` serves edges it has not heard from yet.
  An edge's merged policy can carry the same version number as the fleet's, so once `{edge}/policy`
  has delivered a policy, `fleet/policy` is ignored. `{edge}/policy` is subscribed first and
  `fleet/policy` only once that is acknowledged, so a retained edge policy always arrives first.
- `{edge}/status` up, retained: an EdgeStatus at connect (online), at every heartbeat, and with state
  EDGE_STATE_OFFLINE on a clean stop and as the last will, which the broker publishes when the edge
  vanishes.
- `{edge}/models` up, QoS 1: a FetchModelRequest for a published model's file, named by a fresh
  request_id; its pieces come down on `{edge}/verdicts` as ModelChunk CloudMessages echoing it (a
  refusal as one piece with a gRPC status code). A piece sent twice (QoS 1) is skipped by offset; a
  link lost mid-download ends it with ConnectionError, and the next attempt resumes from the part file.

Delivery: a persistent session (clean start off, session expiry from config), QoS 1 both ways.
paho's network loop runs in its own thread; its callbacks only hand their arguments to the asyncio
loop (`call_soon_threadsafe`). paho retransmits what the broker has not acknowledged; everything
else is the dispatcher's: it keeps each sample until its verdict and sends it again when a cloud
bridge comes back online (`on_cloud_back`), when the broker says nobody subscribes (`on_deferred`)
and when an ack or verdict is late. So a broker session that expired while the cloud was away, or
a broker restarted without persistence, costs a resend, not a sample. Messages that come down are
acknowledged to the broker only after their handler ran (manual ack): a crash in between gets them
again, and the broker never has more than `max_inflight` of them outstanding, which bounds the inbox.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import paho.mqtt.client as mqtt
from google.protobuf.message import DecodeError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from common.manifest import ModelServeError
from common.paho import Inbound, PahoHandoff, close, connect_properties
from common.tls import client_ssl_context
from common.topics import OFFLINE, ONLINE, availability_topic, topic_level
from edge.config import MqttUplinkConfig
from edge.homeassistant import Discovery, HomeAssistantState
from edge.metrics import EdgeMetrics
from edge.uplink.base import UplinkHandlers
from protos import policy_pb2, session_pb2, status_pb2

logger = logging.getLogger(__name__)

FLEET = "fleet"
# Policies remembered to skip the same bytes offered again (a retained policy on every resubscribe).
POLICIES_REMEMBERED = 8
NO_MATCHING_SUBSCRIBERS = 16  # PUBACK reason: the broker took the sample, no cloud bridge is subscribed
# A sample nobody was subscribed to is sent again after 1, 2, 4... s (capped at 30 s): a bridge
# resubscribes within moments of a broker restart (mosquitto does not persist shared subscriptions).
UNHEARD_RETRY_FIRST_S = 1.0
UNHEARD_RETRY_MAX_S = 30.0
UNHEARD_REMEMBERED = 4096
TICK_S = 0.25


@dataclass(frozen=True, slots=True)
class _Topics:
    samples: str
    verdicts: str
    policy: str
    fleet_policy: str
    status: str
    events: str
    cloud_presence: str
    models: str

    @classmethod
    def of(cls, prefix: str, edge_id: str) -> _Topics:
        edge = f"{prefix}/{edge_id}"
        return cls(
            f"{edge}/samples",
            f"{edge}/verdicts",
            f"{edge}/policy",
            f"{prefix}/{FLEET}/policy",
            f"{edge}/status",
            f"{edge}/events",
            f"{prefix}/cloud/+/status",
            f"{edge}/models",
        )

    def snapshot(self, camera_id: str, label: str) -> str:
        """The retained topic of the latest snapshot of `label` on `camera_id`."""
        return f"{self.events.removesuffix('/events')}/{topic_level(camera_id)}/{topic_level(label)}/snapshot"


class MqttUplink:
    """Samples and heartbeats up; acks, verdicts and policies down; same interface as GrpcUplink."""

    def __init__(self, config: MqttUplinkConfig, handlers: UplinkHandlers, metrics: EdgeMetrics) -> None:
        self._config = config
        self._handlers = handlers
        self._metrics = metrics
        self._mids: dict[int, str] = {}  # our sample publishes the broker has not acknowledged yet
        # Unbounded on purpose: the broker sends at most max_inflight unacknowledged messages (receive maximum).
        self._inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self._client: mqtt.Client | None = None
        self._topics = _Topics.of(config.topic_prefix, "-")
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False
        self._cloud_replicas: dict[str, bool] = {}
        self._last_error = "not connected yet"
        self._edge_policy_seen = False
        self._delivered_policies: collections.deque[bytes] = collections.deque(maxlen=POLICIES_REMEMBERED)
        self._nobody_listening = False
        self._unheard: dict[str, int] = {}  # sample_id -> times the broker said nobody subscribes
        # Written by paho's thread only.
        self._paho = PahoHandoff()
        self._edge_subscription = -1
        self._announced: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._home: HomeAssistantState | None = None
        self._edge_id = ""
        # model downloads under way: request_id -> the pieces that came for it (None: the link was lost)
        self._downloads: dict[str, asyncio.Queue[session_pb2.ModelChunk | None]] = {}

    @property
    def connected(self) -> bool:
        """True between the broker's CONNACK and the connection's loss."""
        return self._connected

    @property
    def cloud_reachable(self) -> bool:
        """Connected to the broker and at least one cloud bridge replica says it is online."""
        return self._connected and any(self._cloud_replicas.values())

    @property
    def last_error(self) -> str:
        """Why the connection is down or was lost last, for readiness and logs."""
        return self._last_error

    def send(self, sample_id: str, payload: bytes) -> bool:
        """Publish a serialized Sample without waiting; False while offline or when the broker owes too many PUBACKs."""
        if self._client is None or not self._connected or len(self._mids) >= self._config.send_queue_size:
            return False
        info = self._client.publish(self._topics.samples, payload, qos=self._config.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self._mids[info.mid] = sample_id
        self._metrics.samples_sent.inc()
        self._metrics.uplink_bytes.inc(len(payload))
        return True

    async def start(self) -> None:
        """Connect in the background (paho's thread retries with backoff) and start the heartbeats."""
        hello = self._handlers.hello()
        if hello.edge_id == FLEET:
            raise ValueError(f"edge_id {FLEET!r} is reserved on MQTT ({self._config.topic_prefix}/fleet/policy)")
        self._paho.bind(asyncio.get_running_loop())
        self._topics = _Topics.of(self._config.topic_prefix, hello.edge_id)
        self._edge_id = hello.edge_id
        if self._config.homeassistant:
            discovery = Discovery(
                hello.edge_id, self._config.topic_prefix, self._config.discovery_prefix, hello.agent_version
            )
            self._home = HomeAssistantState(discovery)
            self._home.announce(*self._announced)
        self._client = self._make_client(hello)
        self._client.loop_start()
        self._tasks = [
            asyncio.create_task(self._read_inbox(), name="uplink-mqtt-inbox"),
            asyncio.create_task(self._tick(), name="uplink-mqtt-tick"),
        ]

    def _make_client(self, hello: session_pb2.Hello) -> mqtt.Client:
        config = self._config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id or hello.edge_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if config.tls is not None:
            client.tls_set_context(client_ssl_context(config.tls, "uplink.tls"))
        client.max_inflight_messages_set(config.max_inflight)
        client.reconnect_delay_set(config.reconnect_backoff_min_s, config.reconnect_backoff_max_s)
        will = status_pb2.EdgeStatus(edge_id=hello.edge_id, site_id=hello.site_id, state=status_pb2.EDGE_STATE_OFFLINE)
        client.will_set(self._topics.status, will.SerializeToString(), qos=config.qos, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        properties = connect_properties(config.session_expiry_s, config.max_inflight)
        client.connect_async(config.host, config.port, config.keepalive_s, clean_start=False, properties=properties)
        return client

    async def stop(self) -> None:
        """Say offline (retained), disconnect and stop paho's thread; the broker keeps the session."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client = self._client
        if client is not None:
            if self._connected:
                if self._home is not None:
                    client.publish(self._availability, OFFLINE, qos=self._config.qos, retain=True)
                status = self._handlers.status()
                status.state = status_pb2.EDGE_STATE_OFFLINE
                info = client.publish(
                    self._topics.status, status.SerializeToString(), qos=self._config.qos, retain=True
                )
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    await asyncio.to_thread(info.wait_for_publish, self._config.call_timeout_s)
            await close(client)
        self._connected = False
        self._metrics.uplink_connected.set(0)

    # ------------------------------------------------------------ paho's thread: hand over, nothing else

    def _on_connect(self, client: mqtt.Client, _: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, __: Any) -> None:
        if reason.is_failure:
            self._paho.post(self._connection_lost, f"broker refused the connection: {reason}")
            return
        self._paho.connected()
        qos = SubscribeOptions(qos=self._config.qos)
        _, mid = client.subscribe([(self._topics.verdicts, qos), (self._topics.policy, qos)])
        self._edge_subscription = mid if mid is not None else -1
        client.subscribe(self._topics.cloud_presence, options=qos)
        self._paho.post(self._connection_made, flags.session_present)

    def _on_subscribe(self, client: mqtt.Client, _: Any, mid: int, reasons: list[ReasonCode], __: Any) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            self._paho.post(logger.error, "broker refused subscription %d: %s", mid, ", ".join(refused))
        if mid == self._edge_subscription:
            client.subscribe(self._topics.fleet_policy, options=SubscribeOptions(qos=self._config.qos))

    def _on_connect_fail(self, _: mqtt.Client, __: Any) -> None:
        self._paho.post(self._connection_lost, f"cannot reach broker {self._config.host}:{self._config.port}")

    def _on_disconnect(self, _: mqtt.Client, __: Any, ___: mqtt.DisconnectFlags, reason: ReasonCode, ____: Any) -> None:
        self._paho.post(self._connection_lost, f"connection to the broker lost: {reason}")

    def _on_message(self, _: mqtt.Client, __: Any, message: mqtt.MQTTMessage) -> None:
        inbound = self._paho.inbound(message)
        self._paho.post(self._received, inbound)

    def _on_publish(self, _: mqtt.Client, __: Any, mid: int, reason: ReasonCode, ___: Any) -> None:
        self._paho.post(self._broker_acked, mid, reason.value)

    # ------------------------------------------------------------ the event loop

    def _is_presence(self, topic: str) -> bool:
        prefix = self._topics.cloud_presence.split("+")[0]
        return topic.startswith(prefix) and topic.endswith("/status") and topic.count("/") == prefix.count("/") + 1

    def _connection_made(self, session_present: bool) -> None:
        self._connected = True
        self._last_error = ""
        self._metrics.uplink_connected.set(1)
        self._metrics.uplink_reconnects.inc()
        logger.info(
            "connected to broker %s:%d (session %s)",
            self._config.host,
            self._config.port,
            "resumed" if session_present else "new",
        )
        self._publish_status()
        if self._home is not None:
            self._publish_all([(self._availability, ONLINE, True), *self._home.discovery_messages()])

    @property
    def _availability(self) -> str:
        return availability_topic(self._config.topic_prefix, self._edge_id)

    def _connection_lost(self, why: str) -> None:
        if self._connected or why != self._last_error:
            logger.warning("%s", why)
        self._connected = False
        self._cloud_replicas.clear()  # the retained statuses come again with the next subscription
        self._mids.clear()  # paho's own retransmission is not ours to track: what is lost is resent
        self._last_error = why
        for pieces in self._downloads.values():  # a download does not survive the connection: it resumes later
            pieces.put_nowait(None)
        self._metrics.uplink_connected.set(0)

    def _broker_acked(self, mid: int, reason: int) -> None:
        sample_id = self._mids.pop(mid, None)
        if sample_id is None:
            return
        nobody = reason == NO_MATCHING_SUBSCRIBERS
        if nobody:
            unheard = self._unheard.get(sample_id, 0)
            self._unheard[sample_id] = unheard + 1
            if len(self._unheard) > UNHEARD_REMEMBERED:
                self._unheard.pop(next(iter(self._unheard)))
            self._handlers.on_deferred(
                sample_id, min(UNHEARD_RETRY_MAX_S, UNHEARD_RETRY_FIRST_S * 2**unheard), "no_subscriber"
            )
            if not self._nobody_listening:
                logger.warning("no cloud bridge subscribes %s: samples wait and are sent again", self._topics.samples)
        elif reason >= 0x80:
            self._last_error = f"broker refused sample {sample_id}: reason {reason}"
            logger.warning("%s; sent again later", self._last_error)
            self._handlers.on_deferred(sample_id, UNHEARD_RETRY_MAX_S, "broker_refused")
        else:
            self._unheard.pop(sample_id, None)
        self._nobody_listening = nobody

    def _received(self, inbound: Inbound) -> None:
        """Queue the message for its handler, on the event loop."""
        self._inbox.put_nowait(inbound)

    def publish_event(self, event: dict[str, Any], snapshot: bytes | None = None) -> None:
        """A local event as JSON on {prefix}/{edge}/events (QoS 1, not retained), for Home Assistant or
        Node-RED (schema: docs/events.md), and the object's JPEG retained on
        {prefix}/{edge}/{camera}/{label}/snapshot, as Frigate does. While the broker is away the event
        stays in the file only."""
        if self._client is None or not self.connected:
            self._metrics.events_unpublished.inc()
            return
        self._client.publish(self._topics.events, json.dumps(event, separators=(",", ":")), qos=self._config.qos)
        if snapshot is not None:
            topic = self._topics.snapshot(str(event["camera"]), str(event["label"]))
            self._client.publish(topic, snapshot, qos=self._config.qos, retain=True)
        if self._home is not None:
            self._publish_all(self._home.on_event(event))

    async def model_chunks(
        self, request: session_pb2.FetchModelRequest, timeout_s: float
    ) -> AsyncIterator[session_pb2.ModelChunk]:
        """A published model's file through the broker (the module's docstring), within `timeout_s` in all."""
        if self._client is None or not self._connected:
            raise ConnectionError(f"not connected to the broker ({self._last_error})")
        request_id = uuid.uuid4().hex
        asked = session_pb2.FetchModelRequest()
        asked.CopyFrom(request)
        asked.request_id = request_id
        pieces: asyncio.Queue[session_pb2.ModelChunk | None] = asyncio.Queue()
        self._downloads[request_id] = pieces
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        expected = request.offset
        try:
            self._client.publish(self._topics.models, asked.SerializeToString(), qos=self._config.qos)
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        piece = await pieces.get()
                except TimeoutError as err:
                    raise ConnectionError(f"model download: nothing more within {timeout_s:.3g} s") from err
                if piece is None:
                    raise ConnectionError(f"model download: {self._last_error}")
                if piece.status_code:
                    code = grpc.StatusCode.UNKNOWN.name
                    code = next((c.name for c in grpc.StatusCode if c.value[0] == piece.status_code), code)
                    raise ModelServeError(code, piece.status_message)
                if piece.offset < expected and piece.total_size:
                    continue  # a piece delivered again (QoS 1)
                yield piece
                expected = piece.offset + len(piece.data)
                if expected >= piece.total_size:
                    return
        finally:
            del self._downloads[request_id]

    def announce(self, cameras: list[str], watched: list[str]) -> None:
        """The cameras and the watched labels Home Assistant should see sensors for (sent again on change)."""
        self._announced = (tuple(cameras), tuple(watched))
        if self._home is not None and self._home.announce(cameras, watched) and self.connected:
            self._publish_all(self._home.discovery_messages())

    def _publish_all(self, messages: list[tuple[str, bytes, bool]]) -> None:
        if self._client is not None:
            for topic, payload, retain in messages:
                self._client.publish(topic, payload, qos=self._config.qos, retain=retain)

    def _publish_status(self) -> None:
        if self._client is not None:
            status = self._handlers.status().SerializeToString()
            self._client.publish(self._topics.status, status, qos=self._config.qos, retain=True)

    async def _tick(self) -> None:
        """Heartbeats while connected."""
        interval = self._config.heartbeat_interval_s
        next_heartbeat = time.monotonic() + interval
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if not self._connected:
                continue
            if now >= next_heartbeat:
                self._publish_status()
                next_heartbeat = now + interval

    async def _read_inbox(self) -> None:
        while True:
            inbound = await self._inbox.get()
            try:
                await self._handle(inbound)
            except Exception:
                logger.exception("handling a message of %s failed; it is acknowledged all the same", inbound.topic)
            finally:
                self._paho.ack(self._client, inbound)

    async def _handle(self, inbound: Inbound) -> None:
        if inbound.topic == self._topics.verdicts:
            try:
                message = session_pb2.CloudMessage.FromString(inbound.payload)
            except DecodeError:
                logger.warning("unreadable message (%d bytes) on %s: dropped", len(inbound.payload), inbound.topic)
                return
            await self._dispatch(message)
        elif inbound.topic in (self._topics.policy, self._topics.fleet_policy):
            await self._on_policy(inbound)
        elif self._is_presence(inbound.topic):
            replica = inbound.topic.split("/")[-2]
            was_reachable = self.cloud_reachable
            self._cloud_replicas[replica] = inbound.payload == b"online"
            if self.cloud_reachable and not was_reachable:
                logger.info("cloud bridge %s online", replica)
                self._handlers.on_cloud_back()
        else:
            logger.warning("message on unexpected topic %s: dropped", inbound.topic)

    async def _dispatch(self, message: session_pb2.CloudMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "ack":
            await self._handlers.on_ack(message.ack)
        elif kind == "verdict":
            await self._handlers.on_verdict(message.verdict)
        elif kind == "policy":
            await self._handlers.on_policy(message.policy)
        elif kind == "error":
            logger.error("cloud says: %s %s", message.error.code, message.error.message)
        elif kind == "model_chunk":
            pieces = self._downloads.get(message.model_chunk.request_id)
            if pieces is not None:  # else a piece of a download given up (timed out, replaced)
                pieces.put_nowait(message.model_chunk)

    async def _on_policy(self, inbound: Inbound) -> None:
        if not inbound.payload:
            return  # a retained policy cleared
        if inbound.topic == self._topics.fleet_policy and self._edge_policy_seen:
            return
        try:
            signed = policy_pb2.SignedPolicy.FromString(inbound.payload)
        except DecodeError:
            logger.warning("unreadable policy (%d bytes) on %s: ignored", len(inbound.payload), inbound.topic)
            return
        if inbound.topic == self._topics.policy:
            self._edge_policy_seen = True
        if inbound.payload in self._delivered_policies:
            return
        self._delivered_policies.append(inbound.payload)
        await self._handlers.on_policy(signed)
