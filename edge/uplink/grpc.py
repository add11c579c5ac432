"""The uplink over gRPC: one Session stream to the cloud, kept up for the agent's whole life.

Reconnection is gRPC's own: the stream is opened with `wait_for_ready=True`, so a new call waits for
the channel, which reconnects with the backoff set in the channel options. This module only opens a
new stream when the old one ends and says so (`on_cloud_back`): the dispatcher then sends again what
is in flight. Samples go up as the outbox stored them: the stream's request serializer frames the
stored Sample bytes as an EdgeMessage without parsing them.

The agent's uplink opens its own channel. Given one (`channel=`), it uses that instead and leaves it
open at stop: the lightweight fleet runs many uplinks over a few shared channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from common.tls import TlsError, files_stamp, read_pem, validity_problem
from edge.config import GrpcUplinkConfig
from edge.metrics import EdgeMetrics
from edge.uplink.base import UplinkHandlers
from protos import session_pb2

logger = logging.getLogger(__name__)

SessionCall = grpc.aio.StreamStreamCall[bytes, session_pb2.CloudMessage]
SESSION_METHOD = "/edgeglm.v1.EdgeGLM/Session"
FETCH_MODEL_METHOD = "/edgeglm.v1.EdgeGLM/FetchModel"
_SAMPLE_TAG = bytes([(2 << 3) | 2])  # EdgeMessage.sample: field 2, length-delimited

# A stream that dies at once (cloud refusing us) must not spin: wait at least this before the next.
MIN_SESSION_GAP_S = 0.2
STOP_WAIT_S = 5.0  # stop(): the most the session task, then the channel, may take to close


def channel_options(config: GrpcUplinkConfig) -> list[tuple[str, object]]:
    """Keepalive, message sizes, reconnect backoff and unary retries, all from config."""
    retry = {
        "loadBalancingConfig": [{config.load_balancing: {}}],
        "methodConfig": [
            {
                "name": [{"service": "edgeglm.v1.EdgeGLM", "method": "GetPolicy"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": f"{config.reconnect_backoff_initial_ms / 1000:.3f}s",
                    "maxBackoff": f"{config.reconnect_backoff_max_ms / 1000:.3f}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
    return [
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", config.max_send_message_bytes),
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", config.reconnect_backoff_initial_ms),
        ("grpc.min_reconnect_backoff_ms", config.reconnect_backoff_initial_ms),
        ("grpc.max_reconnect_backoff_ms", config.reconnect_backoff_max_ms),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(retry)),
    ]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def sample_message(payload: bytes) -> bytes:
    """An EdgeMessage holding the serialized Sample `payload`, framed by hand (protobuf's wire format:
    an embedded message is its tag, its length and its bytes), so the stored bytes go as they are."""
    return _SAMPLE_TAG + _varint(len(payload)) + payload


def _serialize(message: bytes | session_pb2.EdgeMessage) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


class GrpcUplink:
    """Samples and heartbeats up; acks, verdicts and policies down."""

    def __init__(
        self,
        config: GrpcUplinkConfig,
        handlers: UplinkHandlers,
        metrics: EdgeMetrics,
        *,
        channel: grpc.aio.Channel | None = None,
        name: str = "uplink",
    ) -> None:
        """`channel`: an open channel to use instead of one of its own (several uplinks in one process,
        as the lightweight fleet runs them, may share it); the uplink then leaves closing it to its owner.
        `name` prefixes its tasks' names."""
        self._config = config
        self._handlers = handlers
        self._metrics = metrics
        # Samples for the writer; None only wakes it (the stream ended: see _wake_writer).
        self._queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=config.send_queue_size)
        self._channel: grpc.aio.Channel | None = channel
        self._owns_channel = channel is None
        self._tls_stamp: tuple[tuple[int, int], ...] = ()
        self._certificate_problem: str | None = None
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._last_error = ""

    @property
    def cloud_reachable(self) -> bool:
        """True while a Session stream is open."""
        return self._connected.is_set()

    @property
    def last_error(self) -> str:
        """Why the last stream ended, for readiness and logs."""
        return self._last_error

    def send(self, sample_id: str, payload: bytes) -> bool:
        """Queue a sample for the open stream without waiting; False when no stream is open or the queue is full."""
        if not self.cloud_reachable:
            return False
        try:
            self._queue.put_nowait((sample_id, payload))
        except asyncio.QueueFull:
            return False
        return True

    def publish_event(self, event: dict[str, Any], snapshot: bytes | None = None) -> None:
        """gRPC carries no local events (they stay in the events file)."""

    def announce(self, cameras: list[str], watched: list[str]) -> None:
        """gRPC has no home-automation side."""

    async def model_chunks(
        self, request: session_pb2.FetchModelRequest, timeout_s: float
    ) -> AsyncIterator[session_pb2.ModelChunk]:
        """The FetchModel stream on the uplink's own channel (its TLS identity), within `timeout_s`."""
        if self._channel is None:
            raise ConnectionError("the gRPC uplink has not started")
        call = self._channel.unary_stream(
            FETCH_MODEL_METHOD,
            request_serializer=session_pb2.FetchModelRequest.SerializeToString,
            response_deserializer=session_pb2.ModelChunk.FromString,
        )(request, timeout=timeout_s, wait_for_ready=True)
        async for chunk in call:
            yield chunk

    async def start(self) -> None:
        """Open the channel (unless one was given) and start the session loop in the background."""
        if self._owns_channel:
            tls = self._config.tls
            if tls is None:
                logger.warning(
                    "uplink to %s without TLS: plaintext, for loopback or a private network", self._config.target
                )
            self._tls_stamp = files_stamp(tls.ca_file, tls.cert_file, tls.key_file) if tls is not None else ()
            self._channel = open_channel(self._config)
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-session")

    async def stop(self) -> None:
        """End the stream and close the channel (a channel that was given stays open for its owner)."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, timeout=STOP_WAIT_S)
            except asyncio.CancelledError:
                pass
            except TimeoutError:
                logger.warning("cloud session task did not end within %.0f s of being cancelled", STOP_WAIT_S)
        if self._channel is not None and self._owns_channel:
            try:
                await asyncio.wait_for(self._channel.close(grace=None), timeout=STOP_WAIT_S)
            except TimeoutError:
                logger.warning("gRPC channel to %s did not close within %.0f s", self._config.target, STOP_WAIT_S)
        self._connected.clear()
        self._metrics.uplink_connected.set(0)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            self._check_certificate()
            try:
                await self._session()
            except grpc.aio.AioRpcError as err:
                self._last_error = f"{err.code().name}: {err.details()}"
                if self._certificate_problem is not None:  # what TLS could not say
                    self._last_error = f"{self._certificate_problem} ({self._last_error})"
                logger.warning("cloud session to %s ended: %s", self._config.target, self._last_error)
            except asyncio.InvalidStateError:
                # A write raced the cloud closing the stream; the dispatcher resends on the next session.
                self._last_error = "stream closed by the cloud"
                logger.warning("cloud session to %s ended: %s", self._config.target, self._last_error)
            except Exception as err:  # a fault of ours (a handler): logged, counted, and a new session
                self._last_error = f"session failed: {err!r}"
                logger.exception("cloud session to %s failed", self._config.target)
                self._metrics.task_failures.labels("uplink-session").inc()
            finally:
                self._connected.clear()
                self._metrics.uplink_connected.set(0)
                _drain(self._queue)  # what was queued for the dead stream is in flight: resent when back
            gap = MIN_SESSION_GAP_S * (1 + random.random()) - (time.monotonic() - started)
            if gap > 0:
                await asyncio.sleep(gap)
            await self._reopen_if_rotated()

    def _check_certificate(self) -> None:
        """Say, once per change, that this edge's own certificate is outside its dates: TLS would only say
        that the connection failed. The edge goes on deciding locally meanwhile."""
        tls = self._config.tls
        problem = validity_problem(tls.cert_file) if tls is not None else None
        if problem is not None and problem != self._certificate_problem:
            logger.error("uplink to %s: %s", self._config.target, problem)
        self._certificate_problem = problem
        if problem is not None:
            self._last_error = problem

    async def _reopen_if_rotated(self) -> None:
        """A new channel when this edge's TLS files changed since it was opened (a rotated certificate)."""
        tls = self._config.tls
        if not self._owns_channel or tls is None or self._channel is None:
            return
        stamp = files_stamp(tls.ca_file, tls.cert_file, tls.key_file)
        if stamp == self._tls_stamp:
            return
        try:
            fresh = open_channel(self._config)
        except TlsError as err:  # half-written files: the old channel goes on, and this is tried again
            logger.warning("TLS files changed but cannot be used yet: %s", err)
            return
        old, self._channel, self._tls_stamp = self._channel, fresh, stamp
        logger.info("TLS certificate %s reloaded: new channel to %s", tls.cert_file, self._config.target)
        await old.close(grace=None)

    def _open(self) -> SessionCall:
        if self._channel is None:
            raise RuntimeError("uplink not started")
        method = self._channel.stream_stream(
            SESSION_METHOD, request_serializer=_serialize, response_deserializer=session_pb2.CloudMessage.FromString
        )
        return method(None, wait_for_ready=True)  # None: we write to the call ourselves

    async def _session(self) -> None:
        call = self._open()
        await call.write(session_pb2.EdgeMessage(hello=self._handlers.hello()).SerializeToString())
        self._connected.set()
        self._metrics.uplink_connected.set(1)
        self._metrics.uplink_reconnects.inc()
        logger.info("cloud session open to %s", self._config.target)
        self._handlers.on_cloud_back()
        reader = asyncio.create_task(self._read(call), name=f"{self._name}-read")
        reader.add_done_callback(self._wake_writer)
        try:
            await self._write_loop(call, reader)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            call.cancel()

    async def _write_loop(self, call: SessionCall, reader: asyncio.Task[None]) -> None:
        next_heartbeat = time.monotonic()
        while not reader.done():
            now = time.monotonic()
            if now >= next_heartbeat:
                await call.write(session_pb2.EdgeMessage(heartbeat=self._handlers.status()).SerializeToString())
                next_heartbeat = now + self._config.heartbeat_interval_s
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (gh-86296).
                async with asyncio.timeout(max(0.01, next_heartbeat - now)):
                    queued = await self._queue.get()
            except TimeoutError:
                continue
            if queued is None:
                continue  # woken because the stream ended
            _, payload = queued
            await call.write(sample_message(payload))
            self._metrics.samples_sent.inc()
            self._metrics.uplink_bytes.inc(len(payload))
        reader.result()  # re-raise the reader's error, if it had one

    def _wake_writer(self, _: asyncio.Task[None]) -> None:
        """The stream ended (the cloud closed it, or it broke): wake the writer waiting for a sample, so a
        new stream is opened now rather than at the next heartbeat or sample."""
        # A full queue needs no wake: the writer is busy with it and meets the ended stream at its next write.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def _read(self, call: SessionCall) -> None:
        async for message in call:
            kind = message.WhichOneof("kind")
            if kind == "ack":
                await self._handlers.on_ack(message.ack)
            elif kind == "verdict":
                await self._handlers.on_verdict(message.verdict)
            elif kind == "policy":
                await self._handlers.on_policy(message.policy)
            elif kind == "error":
                logger.error("cloud says: %s %s", message.error.code, message.error.message)


def _drain(queue: asyncio.Queue[tuple[str, bytes] | None]) -> None:
    while not queue.empty():
        queue.get_nowait()


def open_channel(config: GrpcUplinkConfig) -> grpc.aio.Channel:
    """The channel to the cloud: mutual TLS when `config.tls` is set (common/tls.py), plain TCP otherwise."""
    options = channel_options(config)
    tls = config.tls
    if tls is None:
        return grpc.aio.insecure_channel(config.target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls.ca_file, "uplink.tls.ca_file"),
        private_key=read_pem(tls.key_file, "uplink.tls.key_file"),
        certificate_chain=read_pem(tls.cert_file, "uplink.tls.cert_file"),
    )
    if tls.server_name:
        options = [*options, ("grpc.ssl_target_name_override", tls.server_name)]
    return grpc.aio.secure_channel(config.target, credentials, options=options)
