"""The uplink over gRPC: one Session stream to the cloud, kept up for the agent's whole life.

Reconnection is gRPC's own: the stream is opened with `wait_for_ready=True`, so a new call waits for
the channel, which reconnects with the backoff set in the channel options. This module only opens a
new stream when the old one ends, and resends what the cloud has not acknowledged (the cloud
deduplicates on sample_id, so a resend is never judged twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time

import grpc
import grpc.aio

from edge.config import GrpcUplinkConfig
from edge.metrics import EdgeMetrics
from edge.uplink.base import UplinkHandlers
from protos import sample_pb2, session_pb2, session_pb2_grpc

logger = logging.getLogger(__name__)

SessionCall = grpc.aio.StreamStreamCall[session_pb2.EdgeMessage, session_pb2.CloudMessage]

# A stream that dies at once (cloud refusing us) must not spin: wait at least this before the next.
MIN_SESSION_GAP_S = 0.2
STOP_WAIT_S = 5.0  # stop(): the most the session task, then the channel, may take to close


def channel_options(config: GrpcUplinkConfig) -> list[tuple[str, object]]:
    """Keepalive, message sizes, reconnect backoff and unary retries, all from config."""
    retry = {
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
        ]
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


class GrpcUplink:
    """Samples and heartbeats up; acks, verdicts and policies down."""

    def __init__(self, config: GrpcUplinkConfig, handlers: UplinkHandlers, metrics: EdgeMetrics) -> None:
        self._config = config
        self._handlers = handlers
        self._metrics = metrics
        self._queue: asyncio.Queue[sample_pb2.Sample] = asyncio.Queue(maxsize=config.send_queue_size)
        self._in_flight: dict[str, sample_pb2.Sample] = {}
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._last_heard = 0.0
        self._last_error = ""

    @property
    def connected(self) -> bool:
        """True while a Session stream is open."""
        return self._connected.is_set()

    @property
    def last_error(self) -> str:
        """Why the last stream ended, for readiness and logs."""
        return self._last_error

    @property
    def pending(self) -> int:
        """Samples queued or sent but not yet acknowledged."""
        return self._queue.qsize() + len(self._in_flight)

    def submit(self, sample: sample_pb2.Sample) -> bool:
        """Queue a sample without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(sample)
        except asyncio.QueueFull:
            self._metrics.samples_dropped.labels("send_queue_full").inc()
            logger.warning("uplink queue full (%d): sample %s dropped", self._queue.maxsize, sample.sample_id)
            return False
        return True

    async def start(self) -> None:
        """Open the channel and start the session loop in the background."""
        self._channel = grpc.aio.insecure_channel(self._config.target, options=channel_options(self._config))
        self._task = asyncio.create_task(self._run(), name="uplink-session")

    async def stop(self) -> None:
        """End the stream and close the channel."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, timeout=STOP_WAIT_S)
            except asyncio.CancelledError:
                pass
            except TimeoutError:
                logger.warning("cloud session task did not end within %.0f s of being cancelled", STOP_WAIT_S)
        if self._channel is not None:
            try:
                await asyncio.wait_for(self._channel.close(grace=None), timeout=STOP_WAIT_S)
            except TimeoutError:
                logger.warning("gRPC channel to %s did not close within %.0f s", self._config.target, STOP_WAIT_S)
        self._connected.clear()
        self._metrics.uplink_connected.set(0)

    async def _run(self) -> None:
        stub = self._stub()
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._session(stub)
            except grpc.aio.AioRpcError as err:
                self._last_error = f"{err.code().name}: {err.details()}"
                logger.warning("cloud session to %s ended: %s", self._config.target, self._last_error)
            except asyncio.InvalidStateError:
                # A write raced the cloud closing the stream; the next session resends what is unacked.
                self._last_error = "stream closed by the cloud"
                logger.warning("cloud session to %s ended: %s", self._config.target, self._last_error)
            finally:
                self._connected.clear()
                self._metrics.uplink_connected.set(0)
            gap = MIN_SESSION_GAP_S * (1 + random.random()) - (time.monotonic() - started)
            if gap > 0:
                await asyncio.sleep(gap)

    def _stub(self) -> session_pb2_grpc.EdgeGLMAsyncStub:
        if self._channel is None:
            raise RuntimeError("uplink not started")
        # The generated stub serves sync and aio channels alike; typed here as the aio one it is.
        return session_pb2_grpc.EdgeGLMStub(self._channel)  # type: ignore[return-value,unused-ignore]

    async def _session(self, stub: session_pb2_grpc.EdgeGLMAsyncStub) -> None:
        call = stub.Session(None, wait_for_ready=True)  # None: we write to the call ourselves
        await call.write(session_pb2.EdgeMessage(hello=self._handlers.hello()))
        self._connected.set()
        self._metrics.uplink_connected.set(1)
        self._metrics.uplink_reconnects.inc()
        self._last_heard = time.monotonic()
        logger.info("cloud session open to %s (%d samples to resend)", self._config.target, len(self._in_flight))
        reader = asyncio.create_task(self._read(call), name="uplink-read")
        try:
            for sample in sorted(self._in_flight.values(), key=lambda s: -s.priority):
                await self._write_sample(call, sample)
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
                await call.write(session_pb2.EdgeMessage(heartbeat=self._handlers.status()))
                next_heartbeat = now + self._config.heartbeat_interval_s
            try:
                sample = await asyncio.wait_for(self._queue.get(), timeout=max(0.01, next_heartbeat - now))
            except TimeoutError:
                continue
            self._in_flight[sample.sample_id] = sample
            await self._write_sample(call, sample)
        reader.result()  # re-raise the reader's error, if it had one

    async def _write_sample(self, call: SessionCall, sample: sample_pb2.Sample) -> None:
        self._in_flight[sample.sample_id] = sample
        await call.write(session_pb2.EdgeMessage(sample=sample))
        self._metrics.samples_sent.inc()
        self._metrics.uplink_bytes.inc(sample.ByteSize())

    async def _read(self, call: SessionCall) -> None:
        async for message in call:
            self._last_heard = time.monotonic()
            kind = message.WhichOneof("kind")
            if kind == "ack":
                await self._on_ack(message.ack)
            elif kind == "verdict":
                await self._handlers.on_verdict(message.verdict)
            elif kind == "policy":
                await self._handlers.on_policy(message.policy)
            elif kind == "error":
                logger.error("cloud says: %s %s", message.error.code, message.error.message)

    async def _on_ack(self, ack: session_pb2.Ack) -> None:
        outcome = "duplicate" if ack.duplicate else "accepted" if ack.accepted else "refused"
        self._metrics.acks.labels(outcome).inc()
        if not ack.accepted:
            logger.warning("cloud refused sample %s: %s", ack.sample_id, ack.error)
        # Refused samples are not resent: the cloud judged them malformed, and would again.
        self._in_flight.pop(ack.sample_id, None)
        await self._handlers.on_ack(ack)
