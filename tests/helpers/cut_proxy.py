"""A TCP relay on loopback that cuts its first connection once the server has sent a given number of
bytes through it (a link that breaks in the middle of a download); later connections pass untouched.

The edge dials the relay instead of the cloud, so the cut is what the field sees: both TCP sides
closed mid-stream, the gRPC channel reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

READ_BYTES = 65536


class CutProxy:
    """Relays 127.0.0.1:<port> to the upstream; the first connection ends after `cut_after` downstream bytes."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        """Nothing listens until `start`."""
        self._upstream_port = upstream_port
        self._cut_after = cut_after
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.cuts = 0
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port (`port`)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and end every relayed connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        limit = self._cut_after if self.connections == 1 else None
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        up = asyncio.create_task(self._pump(client_reader, upstream_writer, None))
        down = asyncio.create_task(self._pump(upstream_reader, client_writer, limit))
        self._tasks |= {up, down}
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            self._tasks -= {up, down}
            for writer in (client_writer, upstream_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None) -> None:
        sent = 0
        while data := await reader.read(READ_BYTES):
            if limit is not None and sent + len(data) > limit:
                writer.write(data[: limit - sent])
                await writer.drain()
                self.cuts += 1
                return
            writer.write(data)
            await writer.drain()
            sent += len(data)


@contextlib.asynccontextmanager
async def cut_proxy(upstream_port: int, cut_after: int) -> AsyncIterator[CutProxy]:
    """A started `CutProxy`, closed on exit."""
    proxy = CutProxy(upstream_port, cut_after)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
