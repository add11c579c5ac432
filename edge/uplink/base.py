"""What every uplink transport (gRPC, MQTT) shares with the agent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from protos import policy_pb2, session_pb2, status_pb2, verdict_pb2


@dataclass(frozen=True)
class UplinkHandlers:
    """What the agent does with what comes down, and what it says going up."""

    hello: Callable[[], session_pb2.Hello]
    status: Callable[[], status_pb2.EdgeStatus]
    on_ack: Callable[[session_pb2.Ack], Awaitable[None]]
    on_verdict: Callable[[verdict_pb2.Verdict], Awaitable[None]]
    on_policy: Callable[[policy_pb2.SignedPolicy], Awaitable[None]]
