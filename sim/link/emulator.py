"""The link emulator the harness calls: one per run, an `EdgeLink` per edge, in `inproc` or `netns` mode."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field

from sim.link.profile import LinkProfile
from sim.link.proxy import EdgeProxy, ProxyThread
from sim.link.shaper import DirectionSnapshot, LinkClock

log = logging.getLogger(__name__)

LinkMode = Literal["inproc", "netns"]
STATS_FILE = "link_stats.json"


class LinkStats(BaseModel):
    """What crossed one edge's link; bytes are TCP payload as delivered by the proxy."""

    model_config = ConfigDict(extra="forbid")

    mode: LinkMode = Field(description="the emulation mode that produced these figures")
    edge_id: str = Field(description="the edge this link belongs to")
    bytes_up: int = Field(ge=0, description="payload bytes delivered edge -> cloud")
    bytes_down: int = Field(ge=0, description="payload bytes delivered cloud -> edge")
    segments: int = Field(
        ge=0, description="inproc: 1448-byte segments scheduled, both ways; netns: packets on the edge's veth"
    )
    segments_lost: int = Field(
        ge=0, description="inproc: segments that paid a retransmission delay; netns: packets nftables dropped for loss"
    )
    connections: int = Field(ge=0, description="TCP connections the edge opened through the proxy")
    connect_failures: int = Field(ge=0, description="connections the proxy could not open to the upstream (closed)")
    refused_during_outage: int = Field(
        ge=0,
        description="inproc: connections held (not connected upstream) because they arrived in a window;"
        " netns: SYN packets dropped in a window (retransmitted SYNs count again)",
    )
    outage_packets_dropped: int = Field(ge=0, description="netns: packets dropped by outage rules; inproc: 0")
    outages_applied: int = Field(ge=0, description="outage windows that have started on this link")
    up_series_bytes: list[int] = Field(description="bytes delivered edge -> cloud per second since start_clock()")
    down_series_bytes: list[int] = Field(description="bytes delivered cloud -> edge per second since start_clock()")
    up_active_s: tuple[float, float] | None = Field(
        default=None, description="first and last delivery edge -> cloud, seconds since start_clock() (None: no bytes)"
    )
    down_active_s: tuple[float, float] | None = Field(
        default=None, description="first and last delivery cloud -> edge, seconds since start_clock() (None: no bytes)"
    )


def active_window(snapshot: DirectionSnapshot, clock: LinkClock) -> tuple[float, float] | None:
    """First and last delivery of a direction in seconds since the clock's start (or since t=0 of monotonic)."""
    if snapshot.first_at is None or snapshot.last_at is None:
        return None
    origin = clock.t0 or 0.0
    return snapshot.first_at - origin, snapshot.last_at - origin


def proxy_stats(proxy: EdgeProxy, clock: LinkClock, mode: LinkMode, **kernel_counts: int) -> LinkStats:
    """LinkStats from a proxy's counters; netns passes the kernel's packet counts in `kernel_counts`."""
    up = proxy.up.stats.snapshot()
    down = proxy.down.stats.snapshot()
    counts = {
        "segments": up.segments + down.segments,
        "segments_lost": up.segments_lost + down.segments_lost,
        "refused_during_outage": proxy.held_during_outage,
        "outage_packets_dropped": 0,
        "outages_applied": 0,
    }
    counts.update(kernel_counts)
    return LinkStats(
        mode=mode,
        edge_id=proxy.edge_id,
        bytes_up=up.bytes,
        bytes_down=down.bytes,
        connections=proxy.connections,
        connect_failures=proxy.connect_failures,
        up_series_bytes=up.series,
        down_series_bytes=down.series,
        up_active_s=active_window(up, clock),
        down_active_s=active_window(down, clock),
        **counts,
    )


class EdgeLink:
    """Where an edge connects instead of its upstreams, how to start it, and what crossed its link."""

    def __init__(
        self,
        edge_id: str,
        addresses: dict[str, tuple[str, int]],
        command_prefix: list[str],
        stats: _StatsSource,
        edge_host: str = "127.0.0.1",
    ) -> None:
        """Built by an emulator's add_edge()."""
        self.edge_id = edge_id
        self.addresses = addresses
        self.command_prefix = command_prefix
        # Where the harness reaches a port the edge listens on (health, metrics): its namespace's address
        # in netns mode (the edge must bind 0.0.0.0 there), loopback in inproc mode.
        self.edge_host = edge_host
        self._stats = stats

    def stats(self) -> LinkStats:
        """A snapshot of the link's counters (valid during the run and after the emulator exited)."""
        return self._stats.stats()


class _StatsSource(Protocol):
    def stats(self) -> LinkStats: ...


class LinkEmulator(Protocol):
    """What the harness needs from either mode."""

    mode: LinkMode
    clock: LinkClock  # clock.t0: the monotonic time of start_clock(), to align the series with other events

    async def __aenter__(self) -> LinkEmulator:
        """Set up (netns: bridge, cleanup of a crashed run's leftovers)."""
        ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Tear everything down, even on error."""
        ...

    def start_clock(self) -> None:
        """t=0 for the outage windows of every link and for the per-second series."""
        ...

    async def add_edge(self, edge_id: str, profile: LinkProfile, upstreams: dict[str, tuple[str, int]]) -> EdgeLink:
        """Emulate `profile` between edge `edge_id` and each named upstream (host, port)."""
        ...


def outages_started(profile: LinkProfile, clock: LinkClock) -> int:
    """How many of `profile`'s windows have begun by now."""
    if clock.t0 is None:
        return 0
    elapsed = time.monotonic() - clock.t0
    return sum(1 for outage in profile.outages if outage.start_s <= elapsed)


class InprocLinkStats:
    """LinkStats of an inproc link, read from its proxy."""

    def __init__(self, proxy: EdgeProxy, profile: LinkProfile, clock: LinkClock) -> None:
        """Reads `proxy`'s counters on demand."""
        self.proxy = proxy
        self.profile = profile
        self.clock = clock

    def stats(self) -> LinkStats:
        """A snapshot of the proxy's counters."""
        return proxy_stats(self.proxy, self.clock, "inproc", outages_applied=outages_started(self.profile, self.clock))


class ProxyEmulator(ABC):
    """What both modes share: the proxy thread, the clock, the edges, the stats file at exit."""

    mode: LinkMode = "inproc"
    listen_host = "127.0.0.1"

    def __init__(self, workdir: Path, seed: int = 0) -> None:
        """`workdir` receives link_stats.json at exit; `seed` makes loss and jitter draws repeatable."""
        self.workdir = workdir
        self.seed = seed
        self.clock = LinkClock()
        self.links: dict[str, EdgeLink] = {}
        self._proxies: list[EdgeProxy] = []
        self._thread: ProxyThread | None = None

    async def __aenter__(self) -> Self:
        """Start the proxy thread."""
        self._thread = ProxyThread()
        self._thread.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close every proxy, stop the thread, write the stats file."""
        await self._close_proxies()
        self._write_stats()

    async def _close_proxies(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            for proxy in self._proxies:
                await asyncio.wait_for(thread.call(proxy.close()), 10.0)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, thread.stop)

    def _write_stats(self) -> None:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            payload = {edge: link.stats().model_dump() for edge, link in self.links.items()}
            (self.workdir / STATS_FILE).write_text(json.dumps({"mode": self.mode, "edges": payload}, indent=1))
        except (OSError, ValueError) as exc:
            log.error("could not write %s: %s", self.workdir / STATS_FILE, exc)

    def start_clock(self) -> None:
        """t=0 for the outage windows of every link and for the per-second series."""
        self.clock.start(time.monotonic())

    @abstractmethod
    async def add_edge(self, edge_id: str, profile: LinkProfile, upstreams: dict[str, tuple[str, int]]) -> EdgeLink:
        """Emulate `profile` between edge `edge_id` and each named upstream (host, port)."""

    def _proxy_for(self, edge_id: str, profile: LinkProfile, shape_rate_and_loss: bool) -> EdgeProxy:
        if self._thread is None:
            raise RuntimeError("use the emulator as `async with make_emulator(...) as emulator:` before add_edge")
        if edge_id in self.links:
            raise ValueError(f"edge {edge_id!r} already has a link")
        seed = zlib.crc32(f"{self.seed}:{edge_id}".encode())
        proxy = EdgeProxy(edge_id, profile, self.clock, shape_rate_and_loss, seed)
        self._proxies.append(proxy)
        return proxy

    async def _listen_all(
        self, proxy: EdgeProxy, upstreams: dict[str, tuple[str, int]], host: str
    ) -> dict[str, tuple[str, int]]:
        assert self._thread is not None
        return {name: await self._thread.call(proxy.listen(host, upstream)) for name, upstream in upstreams.items()}


class InprocEmulator(ProxyEmulator):
    """Every shaping rule in the userspace proxy on 127.0.0.1; no privileges needed."""

    mode: LinkMode = "inproc"

    async def add_edge(self, edge_id: str, profile: LinkProfile, upstreams: dict[str, tuple[str, int]]) -> EdgeLink:
        """A proxy per upstream on 127.0.0.1 port 0, sharing the edge's rate and counters."""
        proxy = self._proxy_for(edge_id, profile, shape_rate_and_loss=True)
        addresses = await self._listen_all(proxy, upstreams, self.listen_host)
        link = EdgeLink(edge_id, addresses, [], InprocLinkStats(proxy, profile, self.clock))
        self.links[edge_id] = link
        return link


def make_emulator(mode: LinkMode, workdir: Path, seed: int = 0) -> LinkEmulator:
    """The emulator for `mode`; netns needs root, iproute2 and nftables (see netns_available())."""
    if mode == "inproc":
        return InprocEmulator(workdir, seed)
    if mode == "netns":
        from sim.link.netns import NetnsEmulator

        return NetnsEmulator(workdir, seed)
    raise ValueError(f"link mode {mode!r} is not one of 'inproc', 'netns'")


def netns_available() -> tuple[bool, str]:
    """Whether netns mode can run here, and the reason to show when it cannot."""
    from sim.link.netns import netns_available as probe

    return probe()
