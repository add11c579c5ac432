"""The one interface every uplink transport (gRPC, MQTT) gives the agent, and what it hands back.

A transport moves bytes and reports what comes down; it keeps no state of its own about samples.
What is in flight (sent, without its verdict yet) is the dispatcher's alone (`edge.uplink.dispatch`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from protos import policy_pb2, session_pb2, status_pb2, verdict_pb2


@dataclass(frozen=True)
class UplinkHandlers:
    """What the agent does with what comes down, and what it says going up."""

    hello: Callable[[], session_pb2.Hello]
    status: Callable[[], status_pb2.EdgeStatus]
    on_ack: Callable[[session_pb2.Ack], Awaitable[None]]
    on_verdict: Callable[[verdict_pb2.Verdict], Awaitable[None]]
    on_policy: Callable[[policy_pb2.SignedPolicy], Awaitable[None]]
    # A cloud is there again (a new gRPC session, a bridge online again): what it had may be lost.
    on_cloud_back: Callable[[], None]
    # The transport could not hand a sample to a cloud (no bridge subscribed, broker refused it):
    # (sample_id, seconds to wait before sending it again, reason for the metric).
    on_deferred: Callable[[str, float, str], None]


class Uplink(Protocol):
    """A transport to the cloud: the agent and the dispatcher know it only through this."""

    @property
    def cloud_reachable(self) -> bool:
        """True while a cloud is there to take samples (gRPC: a session is open; MQTT: a bridge is online)."""
        ...

    @property
    def last_error(self) -> str:
        """Why the cloud is not reachable, or was lost last, for readiness and logs."""
        ...

    async def start(self) -> None:
        """Connect in the background; reconnect for as long as the agent runs."""
        ...

    async def stop(self) -> None:
        """Say goodbye and close, bounded."""
        ...

    def send(self, sample_id: str, payload: bytes) -> bool:
        """Hand a serialized Sample to the cloud without waiting; False when it cannot be taken now."""
        ...

    def publish_event(self, event: dict[str, Any], snapshot: bytes | None = None) -> None:
        """A local event (and the object's JPEG) for home-automation users, where the transport carries them
        (MQTT); else nothing."""
        ...

    def announce(self, cameras: list[str], watched: list[str]) -> None:
        """The cameras and watched labels home automation should see (MQTT: Home Assistant discovery); else nothing."""
        ...

    def model_chunks(
        self, request: session_pb2.FetchModelRequest, timeout_s: float
    ) -> AsyncIterator[session_pb2.ModelChunk]:
        """A published model's file from the cloud, piece by piece (gRPC's FetchModel, or MQTT's models topic).

        A refusal raises `common.manifest.ModelServeError` (gRPC: `grpc.aio.AioRpcError`), a cut link
        `ConnectionError`."""
        ...
