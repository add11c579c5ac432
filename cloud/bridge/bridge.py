"""The MQTT bridge: samples from `$share/{group}/edgeglm/+/samples` to the judge, acks and verdicts back.

Replicas subscribe through one shared subscription, so the broker gives each sample to one of them.
Each sample goes through the same `IngestCore` as the gRPC Session (dedup, batcher, store); its Ack
and then its Verdict (or a deferring Ack) are published to `edgeglm/{edge}/verdicts` as session
CloudMessages, QoS 1. The edge keeps each sample until its Verdict and sends it again when no answer
comes (protos/session.proto), so what the broker loses (a session that expired while the cloud was
away, a broker restarted without persistence) is sent again, not lost.
A sample is acknowledged to the broker (manual ack) only once its verdict is published, so a replica
that dies meanwhile gets it again when it returns, and the MQTT receive maximum (`max_in_flight`)
is the bound on samples being judged: beyond it the broker waits. A payload that is not a Sample,
or claims another edge than its topic, is counted in bad_messages and dropped (a refused Ack tells
the edge when its id is known); nothing an edge sends ends the bridge.

Models: an edge asks for a published model's file on `edgeglm/{edge}/models` (a FetchModelRequest
naming its download by request_id, through a shared subscription: one replica serves it), and the
pieces come back on its verdicts topic as CloudMessages with a ModelChunk, each echoing the
request_id; a request that cannot be served gets one ModelChunk with the gRPC status code FetchModel
would have ended with. At most `MODEL_WINDOW` pieces of one download wait for the broker's PUBACK, so
a large model never sits whole in paho's queue. Serving is `cloud.models.serve`, shared with gRPC.

paho's network loop runs in its own thread; its callbacks only hand their arguments to the asyncio
loop. Policies are kept current on the retained policy topics by `EdgeDirectory`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Any

import grpc
import paho.mqtt.client as mqtt
from google.protobuf.message import DecodeError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud.bridge.config import MqttBridgeConfig
from cloud.bridge.edges import EdgeDirectory
from cloud.ingest import Deferral, IngestCore, decision_label
from cloud.metrics import CloudMetrics
from cloud.models.registry import ModelRegistry
from cloud.models.serve import ServeRefusedError, model_pieces
from cloud.policy import PolicyChange, PolicyEngine
from cloud.server.fleet import FleetStatus
from common.paho import Inbound, PahoHandoff, close, connect_properties
from common.tls import client_ssl_context
from protos import sample_pb2, session_pb2

logger = logging.getLogger(__name__)
QOS = 1
MODEL_WINDOW = 4  # pieces of one model download published and not yet acknowledged by the broker
MAX_FETCH_REQUEST_BYTES = 4096


class MqttBridge:
    """One replica's MQTT front: `start`, then `stop` once."""

    def __init__(
        self,
        config: MqttBridgeConfig,
        ingest: IngestCore,
        policy: PolicyEngine,
        metrics: CloudMetrics,
        *,
        fleet: FleetStatus | None = None,
        known_edges: Collection[str] = (),
        models: ModelRegistry | None = None,
        model_piece_bytes: int = 1 << 20,
    ) -> None:
        """Judge samples with `ingest`, publish `policy`'s versions; `known_edges` (if any) is an allow-list;
        `models` is the registry edges fetch from (none: every fetch is refused, as on gRPC)."""
        self._config = config
        self._models = models
        self._model_piece_bytes = model_piece_bytes
        self._published = asyncio.Event()
        self._ingest = ingest
        self._metrics = metrics
        self._policy = policy
        prefix = config.topic_prefix
        self._samples_filter = f"$share/{config.share_group}/{prefix}/+/samples"
        self._models_filter = f"$share/{config.share_group}/{prefix}/+/models"
        self._status_filter = f"{prefix}/+/status"
        self.edges = EdgeDirectory(prefix, policy, metrics, self._publish, fleet, known_edges)
        self._client: mqtt.Client | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = False
        self._stopping = False
        self._last_error = "not connected yet"
        self._unconfirmed: set[int] = set()  # mids of our publishes the broker has not acknowledged yet
        self._paho = PahoHandoff()

    @property
    def connected(self) -> bool:
        """True between the broker's CONNACK and the connection's loss."""
        return self._connected

    @property
    def last_error(self) -> str:
        """Why the connection is down or was lost last."""
        return self._last_error

    @property
    def in_flight(self) -> int:
        """Samples received and not yet answered with their verdict."""
        return len(self._tasks)

    @property
    def _presence_topic(self) -> str:
        """This replica's retained presence: b"online" while connected, b"offline" (also its last will)."""
        return f"{self._config.topic_prefix}/cloud/{self._config.effective_client_id()}/status"

    async def start(self) -> None:
        """Connect in the background (paho's thread retries with backoff) and follow the policy engine."""
        config = self._config
        self._paho.bind(asyncio.get_running_loop())
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.effective_client_id(),
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if config.tls is not None:
            client.tls_set_context(client_ssl_context(config.tls, "mqtt.tls"))
        client.reconnect_delay_set(config.reconnect_backoff_min_s, config.reconnect_backoff_max_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        # Presence: edges treat the cloud as reachable while some replica's retained status says online.
        client.will_set(self._presence_topic, b"offline", qos=QOS, retain=True)
        properties = connect_properties(config.session_expiry_s, config.max_in_flight)
        client.connect_async(config.host, config.port, config.keepalive_s, clean_start=False, properties=properties)
        self._client = client
        self._policy.subscribe(self._policy_changed)
        client.loop_start()
        logger.info("MQTT bridge to %s:%d, subscribing %s", config.host, config.port, self._samples_filter)

    async def stop(self, deadline: float | None = None) -> None:
        """Leave the share group, answer the samples in hand until `deadline` (monotonic), disconnect (again: no-op)."""
        if self._stopping:
            return
        self._stopping = True
        client = self._client
        if client is not None and self._connected:
            client.unsubscribe(self._samples_filter)  # the broker sends new samples to the other replicas
            info = client.publish(self._presence_topic, b"offline", qos=QOS, retain=True)
            self._unconfirmed.add(info.mid)
        while self._tasks:  # samples already on their way when we left the group are answered too
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
            if late:
                logger.warning("MQTT bridge stopped with %d samples unanswered (edges will resend)", len(late))
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                break
        # Closing with the broker's PUBACKs unread resets the connection, and the broker drops what it had not read.
        while self._unconfirmed and self._connected and (deadline is None or time.monotonic() < deadline):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if client is not None:
            await close(client)
        self.edges.forget_presence()
        self._connected = False

    # ------------------------------------------------------------ paho's thread: hand over, nothing else

    def _on_connect(self, client: mqtt.Client, _: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, __: Any) -> None:
        if reason.is_failure:
            self._paho.post(self._connection_lost, f"broker refused the connection: {reason}")
            return
        self._paho.connected()
        options = SubscribeOptions(qos=QOS)
        client.subscribe(
            [(self._status_filter, options), (self._samples_filter, options), (self._models_filter, options)]
        )
        client.publish(self._presence_topic, b"online", qos=QOS, retain=True)
        self._paho.post(self._connection_made, flags.session_present)

    def _on_connect_fail(self, _: mqtt.Client, __: Any) -> None:
        self._paho.post(self._connection_lost, f"cannot reach broker {self._config.host}:{self._config.port}")

    def _on_disconnect(self, _: mqtt.Client, __: Any, ___: mqtt.DisconnectFlags, reason: ReasonCode, ____: Any) -> None:
        self._paho.post(self._connection_lost, f"connection to the broker lost: {reason}")

    def _on_publish(self, _: mqtt.Client, __: Any, mid: int, ___: ReasonCode, ____: Any) -> None:
        self._paho.post(self._confirmed, mid)

    def _on_message(self, _: mqtt.Client, __: Any, message: mqtt.MQTTMessage) -> None:
        self._paho.post(self._received, self._paho.inbound(message))

    # ------------------------------------------------------------ the event loop

    def _connection_made(self, session_present: bool) -> None:
        self._connected = True
        self._last_error = ""
        logger.info(
            "MQTT bridge connected to %s:%d (session %s)",
            self._config.host,
            self._config.port,
            "resumed" if session_present else "new",
        )
        self.edges.connected()

    def _connection_lost(self, why: str) -> None:
        if self._connected or why != self._last_error:
            logger.warning("MQTT bridge: %s", why)
        self._connected = False
        self._last_error = why
        self._published.set()  # downloads waiting for PUBACKs stop

    def _confirmed(self, mid: int) -> None:
        self._unconfirmed.discard(mid)
        self._published.set()

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self._publish_mid(topic, payload, retain)

    def _publish_mid(self, topic: str, payload: bytes, retain: bool) -> int:
        """Publish at QoS 1; the message id, whose PUBACK `_confirmed` sees (-1 before start)."""
        if self._client is None:
            return -1
        mid = self._client.publish(topic, payload, qos=QOS, retain=retain).mid
        self._unconfirmed.add(mid)
        return mid

    async def _policy_changed(self, change: PolicyChange) -> None:
        if not self._stopping:
            await self.edges.policy_changed(change)

    def _received(self, inbound: Inbound) -> None:
        edge_id, kind = self._parse_topic(inbound.topic)
        if kind in ("samples", "models"):
            work = self._answer(edge_id, inbound) if kind == "samples" else self._serve_model(edge_id, inbound)
            task = asyncio.create_task(work, name=f"mqtt-{kind}-{edge_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        try:
            if kind == "status":
                self.edges.status(edge_id, inbound.payload)
            elif kind != "samples":
                self._metrics.bad_messages.labels("malformed").inc()
                logger.info("message on unexpected topic %r: dropped", inbound.topic)
        finally:
            self._paho.ack(self._client, inbound)

    def _parse_topic(self, topic: str) -> tuple[str, str]:
        """(edge id, last level) of `{prefix}/{edge}/{kind}`; ("", "") when the topic has another shape."""
        prefix = self._config.topic_prefix + "/"
        levels = topic.removeprefix(prefix).split("/") if topic.startswith(prefix) else []
        if len(levels) != 2 or not levels[0]:
            return "", ""
        return levels[0], levels[1]

    async def _answer(self, edge_id: str, inbound: Inbound) -> None:
        try:
            await self._judge_sample(edge_id, inbound.payload)
        except Exception:
            logger.exception("sample from edge %s over MQTT failed (the edge will resend it)", edge_id)
        finally:
            self._paho.ack(self._client, inbound)

    async def _judge_sample(self, edge_id: str, payload: bytes) -> None:
        limit = self._config.max_message_bytes
        if len(payload) > limit:
            self._metrics.bad_messages.labels("oversized").inc()
            problem = f"a sample of {len(payload)} bytes is larger than the {limit} accepted; it was dropped"
            logger.info("edge %s over MQTT: %s", edge_id, problem)
            error = session_pb2.SessionError(code=session_pb2.SESSION_ERROR_CODE_INVALID_MESSAGE, message=problem)
            self._send(edge_id, session_pb2.CloudMessage(error=error))
            return
        try:
            sample = sample_pb2.Sample.FromString(payload)
        except DecodeError:
            self._metrics.bad_messages.labels("malformed").inc()
            logger.info("unreadable sample (%d bytes) from edge %s: dropped", len(payload), edge_id)
            return
        if not sample.edge_id:
            sample.edge_id = edge_id
        if sample.edge_id != edge_id:
            self._refuse(
                edge_id, sample.sample_id, "malformed", f"edge_id {sample.edge_id!r} on edge {edge_id}'s topic"
            )
            return
        if not self.edges.allowed(edge_id):
            problem = f"edge {edge_id!r} is not in the cloud's known_edges; add it to cloud.yaml to let it in"
            self._refuse(edge_id, sample.sample_id, "unknown_edge", problem)
            return
        self.edges.sample(edge_id)
        admission = await self._ingest.admit(sample, transport="mqtt")
        self._send(edge_id, session_pb2.CloudMessage(ack=admission.ack))
        if admission.outcome is None:
            return
        verdict = await asyncio.shield(admission.outcome)
        if isinstance(verdict, Deferral):
            self._send(edge_id, session_pb2.CloudMessage(ack=verdict.ack()))
            return
        self._send(edge_id, session_pb2.CloudMessage(verdict=verdict))
        self._metrics.verdicts_sent.labels(decision_label(verdict)).inc()

    async def _serve_model(self, edge_id: str, inbound: Inbound) -> None:
        try:
            await self._send_model(edge_id, inbound.payload)
        except Exception:
            logger.exception("model download of edge %s over MQTT failed (the edge will ask again)", edge_id)
        finally:
            self._paho.ack(self._client, inbound)

    async def _send_model(self, edge_id: str, payload: bytes) -> None:
        if len(payload) > MAX_FETCH_REQUEST_BYTES:
            self._metrics.bad_messages.labels("oversized").inc()
            logger.info("edge %s over MQTT: a %d-byte model request: dropped", edge_id, len(payload))
            return
        try:
            request = session_pb2.FetchModelRequest.FromString(payload)
        except DecodeError:
            self._metrics.bad_messages.labels("malformed").inc()
            logger.info("unreadable model request (%d bytes) from edge %s: dropped", len(payload), edge_id)
            return
        request.edge_id = request.edge_id or edge_id
        refusal: tuple[grpc.StatusCode, str] | None = None
        if request.edge_id != edge_id:
            self._metrics.bad_messages.labels("impostor").inc()
            refusal = grpc.StatusCode.PERMISSION_DENIED, f"edge_id {request.edge_id!r} on edge {edge_id}'s topic"
        elif not self.edges.allowed(edge_id):
            self._metrics.bad_messages.labels("unknown_edge").inc()
            refusal = grpc.StatusCode.PERMISSION_DENIED, f"edge {edge_id!r} is not in the cloud's known_edges"
        if refusal is not None:
            self._send_piece(edge_id, self._refused_piece(request, *refusal))
            return
        mine: list[int] = []
        try:
            async for piece in model_pieces(
                self._models, request, self._metrics, self._model_piece_bytes, transport="mqtt"
            ):
                mine.append(self._send_piece(edge_id, piece))
                await self._within_window(mine)
                if not self._connected:  # the edge asks again, from what it has
                    logger.info("MQTT bridge: connection lost while edge %s downloaded a model", edge_id)
                    return
        except ServeRefusedError as refused:
            self._send_piece(edge_id, self._refused_piece(request, refused.code, str(refused)))

    @staticmethod
    def _refused_piece(
        request: session_pb2.FetchModelRequest, code: grpc.StatusCode, message: str
    ) -> session_pb2.ModelChunk:
        return session_pb2.ModelChunk(request_id=request.request_id, status_code=code.value[0], status_message=message)

    def _send_piece(self, edge_id: str, piece: session_pb2.ModelChunk) -> int:
        message = session_pb2.CloudMessage(model_chunk=piece)
        return self._publish_mid(f"{self._config.topic_prefix}/{edge_id}/verdicts", message.SerializeToString(), False)

    async def _within_window(self, mids: list[int]) -> None:
        """Wait until at most MODEL_WINDOW of `mids` are unacknowledged (while connected)."""
        while self._connected and sum(mid in self._unconfirmed for mid in mids) > MODEL_WINDOW:
            self._published.clear()
            await self._published.wait()

    def _refuse(self, edge_id: str, sample_id: str, reason: str, problem: str) -> None:
        self._metrics.bad_messages.labels(reason).inc()
        logger.info("sample %s refused: %s", sample_id, problem)
        ack = session_pb2.Ack(sample_id=sample_id, accepted=False, error=f"sample {sample_id}: {problem}")
        self._send(edge_id, session_pb2.CloudMessage(ack=ack))

    def _send(self, edge_id: str, message: session_pb2.CloudMessage) -> None:
        self._publish(f"{self._config.topic_prefix}/{edge_id}/verdicts", message.SerializeToString(), False)
