"""Real TCP servers on loopback (or the bridge address) for the link emulator tests: a sink and an echo."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Received:
    """What one connection to the sink delivered, with monotonic arrival times."""

    data: bytearray = field(default_factory=bytearray)
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    connected_at: float = 0.0
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Sink:
    """Every connection's bytes and arrival times."""

    connections: list[Received] = field(default_factory=list)
    port: int = 0


@contextlib.asynccontextmanager
async def sink_server(host: str = "127.0.0.1") -> AsyncIterator[Sink]:
    """A server that reads everything each connection sends and timestamps every read."""
    sink = Sink()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = Received(connected_at=time.monotonic())
        sink.connections.append(received)
        try:
            while chunk := await reader.read(65536):
                received.arrivals.append((time.monotonic(), len(chunk)))
                received.data += chunk
        except ConnectionError:
            pass
        finally:
            received.closed.set()
            writer.close()

    server = await asyncio.start_server(handle, host, 0)
    sink.port = server.sockets[0].getsockname()[1]
    async with server:
        yield sink


@contextlib.asynccontextmanager
async def echo_server(host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A server that writes back whatever it reads; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def source_server(payload: bytes, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A server that writes `payload` to each connection and closes it; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(payload)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


def numbered(count: int) -> bytes:
    """`count` big-endian 32-bit sequence numbers: any reordering or loss shows."""
    return b"".join(struct.pack(">I", i) for i in range(count))


def pattern(size: int) -> bytes:
    """`size` bytes that differ at every offset mod 251 (a prime), so a shifted or lost segment shows."""
    block = bytes(range(251))
    return (block * (size // 251 + 1))[:size]
