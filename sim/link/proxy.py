"""The userspace side of the link: an asyncio TCP proxy per (edge, upstream) that applies a `Direction`.

Hand-written because no library shapes a TCP stream this way without netem (toxiproxy is a Go
daemon and adds its own control plane); the rules themselves live in `sim.link.shaper`.
All proxies of an emulator share one event loop in a thread of their own, so the harness's work
(decoding, report writing) does not disturb their timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Coroutine
from functools import partial
from typing import Any, TypeVar

from sim.link.profile import SEGMENT_BYTES, LinkProfile
from sim.link.shaper import Direction, LinkClock, OutageSchedule

log = logging.getLogger(__name__)

T = TypeVar("T")

READ_BYTES = 65536
# Units (segments or chunks) queued between a connection's reader and its writer: the backpressure
# point. 4096 segments is ~6 MB, enough for a 100 Mbit/s link with 400 ms of delay.
QUEUE_UNITS = 4096
# Bytes an edge may send while its connection is held during an outage before we stop reading.
HOLD_BUFFER_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 10.0


class ProxyThread:
    """An event loop running in a daemon thread; coroutines are submitted from any other loop."""

    def __init__(self, name: str = "eglm-link") -> None:
        """Created stopped; call start()."""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the loop's thread."""
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the proxy loop and await its result from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel what still runs on the loop, stop it and join the thread."""
        if not self._thread.is_alive():
            self.loop.close()
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout_s)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("link proxy thread did not stop within %.1f s", timeout_s)
            return
        self.loop.close()


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _wait_out_outage(outages: OutageSchedule) -> None:
    while (end := outages.end_of_outage(time.monotonic())) is not None:
        await _sleep_until(end)


def _units(data: bytes, per_segment: bool) -> list[bytes]:
    if not per_segment:
        return [data]
    return [data[i : i + SEGMENT_BYTES] for i in range(0, len(data), SEGMENT_BYTES)]


async def pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    direction: Direction,
    clock: LinkClock,
    initial: bytes = b"",
) -> None:
    """Move one direction of one connection through `direction`; half-closes the writer at EOF."""
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=QUEUE_UNITS)

    async def pump() -> None:
        previous_delivery = 0.0
        data = initial
        while True:
            if not data:
                data = await reader.read(READ_BYTES)
                if not data:
                    break
            for unit in _units(data, direction.per_segment):
                await _wait_out_outage(direction.outages)
                plan = direction.plan(len(unit), time.monotonic(), previous_delivery)
                await _sleep_until(plan.send_at)
                previous_delivery = plan.deliver_at
                await queue.put((plan.deliver_at, unit))
            data = b""
        await queue.put(None)

    async def deliver() -> None:
        while (item := await queue.get()) is not None:
            deliver_at, unit = item
            await _sleep_until(deliver_at)
            # A unit due inside an outage waits for its end: nothing crosses a window.
            await _wait_out_outage(direction.outages)
            writer.write(unit)
            await writer.drain()
            direction.stats.delivered(len(unit), time.monotonic(), clock)
        if writer.can_write_eof():
            writer.write_eof()

    tasks = (asyncio.create_task(pump()), asyncio.create_task(deliver()))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class EdgeProxy:
    """Every proxy of one edge: one up and one down `Direction` shared by all its connections."""

    def __init__(
        self, edge_id: str, profile: LinkProfile, clock: LinkClock, shape_rate_and_loss: bool, seed: int
    ) -> None:
        """`shape_rate_and_loss=False`: only delay and jitter (netns mode, where the kernel does the rest)."""
        now = time.monotonic()
        rng = random.Random(seed)
        self.edge_id = edge_id
        self.clock = clock
        self.outages = OutageSchedule(clock, profile.outages if shape_rate_and_loss else [])
        self.up = Direction(
            profile.up_kbit, profile, self.outages, random.Random(rng.random()), now, shape_rate_and_loss
        )
        self.down = Direction(
            profile.down_kbit, profile, self.outages, random.Random(rng.random()), now, shape_rate_and_loss
        )
        self.connections = 0
        self.held_during_outage = 0
        self.gave_up_during_outage = 0
        self.connect_failures = 0
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, upstream: tuple[str, int]) -> tuple[str, int]:
        """Start a listener on `host` port 0 that forwards to `upstream`; returns its address."""
        server = await asyncio.start_server(partial(self._handle, upstream), host, 0)
        self._servers.append(server)
        sockname = server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        for server in self._servers:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def _hold_during_outage(self, reader: asyncio.StreamReader) -> bytes | None:
        """Keep a new connection waiting while a window lasts; None if the edge gave up (closed) meanwhile."""
        buffered = bytearray()
        held = False
        while (end := self.outages.end_of_outage(time.monotonic())) is not None:
            if not held:
                held = True
                self.held_during_outage += 1
            if len(buffered) >= HOLD_BUFFER_BYTES:
                await _sleep_until(end)
                continue
            try:
                chunk = await asyncio.wait_for(reader.read(READ_BYTES), timeout=max(0.0, end - time.monotonic()))
            except TimeoutError:
                continue
            if not chunk:
                self.gave_up_during_outage += 1
                return None
            buffered += chunk
        return bytes(buffered)

    async def _handle(
        self, upstream: tuple[str, int], client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            initial = await self._hold_during_outage(client_reader)
            if initial is None:
                return
            try:
                upstream_reader, connected_writer = await asyncio.wait_for(
                    asyncio.open_connection(*upstream), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                self.connect_failures += 1
                log.warning("edge %s: upstream %s:%d unreachable: %s", self.edge_id, *upstream, exc)
                return
            upstream_writer = connected_writer
            await self._relay(client_reader, client_writer, upstream_reader, connected_writer, initial)
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError, asyncio.CancelledError):
                        await writer.wait_closed()
            self._handlers.discard(task)

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
        initial: bytes,
    ) -> None:
        """Both directions until both ended; a reset on one side cuts the other."""
        tasks = [
            asyncio.create_task(pipe(client_reader, upstream_writer, self.up, self.clock, initial)),
            asyncio.create_task(pipe(upstream_reader, client_writer, self.down, self.clock)),
        ]
        try:
            pending: set[asyncio.Task[None]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(t.cancelled() or t.exception() is not None for t in done):
                    break
        finally:
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception) and not isinstance(result, OSError):
                    log.error("edge %s: relay failed: %r", self.edge_id, result)
