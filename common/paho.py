"""paho-mqtt's network thread handed to an asyncio loop, the way the edge's uplink and the cloud's
bridge both need it.

paho runs its callbacks on its own thread; `PahoHandoff.post` is the only thing they do: hand their
arguments to the loop (`call_soon_threadsafe`). Each connection has a generation, so a message kept
from an earlier connection is not acknowledged on this one (the broker sends it again on it): QoS 1
with manual acks, where the ack goes out only once the message was handled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message received, as the loop handles it: of which connection, where, what."""

    generation: int
    topic: str
    payload: bytes
    mid: int
    qos: int


class PahoHandoff:
    """The bridge between one paho client's thread and the asyncio loop it was bound on."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self.generation = 0  # written by paho's thread only (on each CONNACK)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop callbacks are handed to (call from that loop, before connecting)."""
        self._loop = loop

    def post(self, callback: Callable[..., None], *args: Any) -> None:
        """From paho's thread: run `callback(*args)` on the loop (nothing once the loop is closed)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the program is gone
                self._loop.call_soon_threadsafe(callback, *args)

    def connected(self) -> None:
        """From paho's thread, on a successful CONNACK: a new connection begins."""
        self.generation += 1

    def inbound(self, message: mqtt.MQTTMessage) -> Inbound:
        """From paho's thread: the message, stamped with the connection it came on."""
        return Inbound(self.generation, message.topic, bytes(message.payload), message.mid, message.qos)

    def ack(self, client: mqtt.Client | None, inbound: Inbound) -> None:
        """Acknowledge a handled QoS 1 message to the broker, if it came on this connection."""
        if client is not None and inbound.qos > 0 and inbound.generation == self.generation:
            client.ack(inbound.mid, inbound.qos)


def connect_properties(session_expiry_s: int, receive_maximum: int) -> Properties:
    """CONNECT properties of a persistent MQTT 5 session with a bound on messages in flight to us."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it untyped
    properties.SessionExpiryInterval = session_expiry_s
    properties.ReceiveMaximum = receive_maximum
    return properties


async def close(client: mqtt.Client) -> None:
    """Disconnect and stop paho's thread (off the loop), then close its wake-up sockets."""
    client.disconnect()
    await asyncio.to_thread(client.loop_stop)
    # paho closes its wake-up socket pair only in __del__, which a reference cycle may run late.
    client._reset_sockets()
