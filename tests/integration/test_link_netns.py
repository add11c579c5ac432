"""The netns link emulator: a real client process in the edge's namespace, tc for rate, nftables for loss and outages.

Needs root, iproute2 and nftables (`make netns-tools`); skipped with the reason otherwise, failed on CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sim.link import LinkProfile, Outage, make_emulator, netns_available
from sim.link.netns import BRIDGE, NAMESPACES_REFUSED, eglm_namespaces, machine_lock, run
from tests.helpers.link_servers import pattern, sink_server
from tests.helpers.wait import wait_until

# Outage windows are checked to within 100 ms of their schedule, and their rules are applied by spawned
# `ip netns exec nft` commands: beside other tests on a loaded machine, bytes got through inside a window.
pytestmark = [pytest.mark.slow, pytest.mark.alone]

# The edge side of each test: a plain Python client in the namespace (argv: host port size [count interval]).
SEND_PATTERN = """
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
count, interval = (int(sys.argv[4]), float(sys.argv[5])) if len(sys.argv) > 4 else (1, 0.0)
block = bytes(range(251)) * (size // 251 + 1)
data = block[:size]
s = socket.create_connection((host, port), timeout=20)
for i in range(count):
    s.sendall(data[i * size // count:(i + 1) * size // count])
    time.sleep(interval)
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
"""


@pytest.fixture(autouse=True)
def _netns_or_skip() -> None:
    ok, reason = netns_available()
    if ok:
        return
    # CI runs as root and `make test` installs the tools: only a container that refuses namespaces may skip.
    if os.environ.get("CI") == "true" and not reason.startswith(NAMESPACES_REFUSED):
        pytest.fail(f"netns link tests cannot run on CI: {reason}")
    pytest.skip(reason)


@contextlib.asynccontextmanager
async def edge_process(
    prefix: list[str], address: tuple[str, int], *args: object
) -> AsyncIterator[asyncio.Future[int]]:
    """The client started with the link's command prefix; yields its exit code as a future; killed if still running."""
    process = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-c", SEND_PATTERN, address[0], str(address[1]), *map(str, args)
    )
    waiter = asyncio.ensure_future(process.wait())
    try:
        yield waiter
    finally:
        if process.returncode is None:
            process.kill()
        await waiter


def assert_nothing_left() -> None:
    # Under the emulators' lock: no emulator runs then (another xdist worker's, another test run's), so
    # any `eglm-*` namespace or link is one that was left behind.
    with machine_lock():
        namespaces = eglm_namespaces()
        links = run(["ip", "-o", "link", "show"])
    assert namespaces == []
    assert f"{BRIDGE}:" not in links


async def test_netns_rate_limit_holds(tmp_path: Path) -> None:
    size = 400_000
    async with sink_server() as sink, make_emulator("netns", tmp_path) as emulator:
        link = await emulator.add_edge("edge-1", LinkProfile(up_kbit=1000.0), {"grpc": ("127.0.0.1", sink.port)})
        assert link.command_prefix[:3] == ["ip", "netns", "exec"]
        assert link.edge_host.startswith("10.199.")
        assert link.addresses["grpc"][0] == "10.199.0.1"
        emulator.start_clock()
        async with edge_process(link.command_prefix, link.addresses["grpc"], size) as exit_code:
            assert await asyncio.wait_for(exit_code, 15.0) == 0
        stats = link.stats()
    assert_nothing_left()
    assert bytes(sink.connections[0].data) == pattern(size)
    assert stats.mode == "netns"
    assert stats.bytes_up == size
    assert stats.up_active_s is not None
    first, last = stats.up_active_s
    # 1000 kbit/s of payload = 125,000 bytes/s, on the proxy's own delivery times: a limit only (a loaded
    # machine slows the link, it cannot speed it up); how close it comes is bench.link's goodput.
    assert size / (last - first) <= 125_000 * 1.15
    assert stats.segments > size // 1448


async def test_netns_outage_blocks_traffic_then_releases_all_of_it(tmp_path: Path) -> None:
    window = Outage(start_s=1.0, duration_s=1.5)
    size, messages = 70 * 1024, 70  # 1 KB every 50 ms for 3.5 s, across the window
    async with sink_server() as sink, make_emulator("netns", tmp_path) as emulator:
        profile = LinkProfile(up_kbit=2000.0, down_kbit=2000.0, rtt_ms=20.0, outages=[window])
        link = await emulator.add_edge("edge-1", profile, {"grpc": ("127.0.0.1", sink.port)})
        address = link.addresses["grpc"]
        async with edge_process(link.command_prefix, address, size, messages, 0.05) as steady:
            # The steady sender is connected before t=0.
            await wait_until(lambda: sink.connections, "the edge process to connect", 10, 0.05)
            assert sink.connections, "the edge process never connected"
            emulator.start_clock()
            t0 = emulator.clock.t0
            assert t0 is not None
            await asyncio.sleep(max(0.0, t0 + 1.3 - time.monotonic()))
            async with edge_process(link.command_prefix, address, 5) as late:
                assert await asyncio.wait_for(late, 15.0) == 0
            assert await asyncio.wait_for(steady, 15.0) == 0
        stats = link.stats()
    assert_nothing_left()
    first, second = sink.connections
    inside = [(at, n) for at, n in first.arrivals if t0 + window.start_s + 0.1 <= at < t0 + window.end_s]
    assert inside == []
    assert bytes(first.data) == pattern(size)
    assert any(at >= t0 + window.end_s for at, _ in first.arrivals)
    # A connection opened inside the window gets through only after it (its SYNs were dropped).
    assert second.connected_at >= t0 + window.end_s
    assert bytes(second.data) == pattern(5)
    assert stats.outages_applied == 1
    assert stats.refused_during_outage >= 1
    assert stats.outage_packets_dropped > stats.refused_during_outage


async def test_netns_loss_is_counted_at_the_configured_rate_and_every_byte_arrives(tmp_path: Path) -> None:
    size = 1_000_000
    async with sink_server() as sink, make_emulator("netns", tmp_path) as emulator:
        link = await emulator.add_edge("edge-1", LinkProfile(loss=0.05), {"grpc": ("127.0.0.1", sink.port)})
        async with edge_process(link.command_prefix, link.addresses["grpc"], size) as exit_code:
            assert await asyncio.wait_for(exit_code, 15.0) == 0
        stats = link.stats()
    assert_nothing_left()
    assert hashlib.sha256(bytes(sink.connections[0].data)).digest() == hashlib.sha256(pattern(size)).digest()
    tolerance = 4 * math.sqrt(stats.segments * 0.05 * 0.95)
    assert stats.segments > size // 1448
    assert abs(stats.segments_lost - 0.05 * stats.segments) <= tolerance


async def test_netns_removes_a_crashed_runs_namespaces_at_start(tmp_path: Path) -> None:
    with machine_lock():  # as a crashed emulator would have: while no other one can be at work
        run(["ip", "netns", "add", "eglm-99-crashed"])
    try:
        async with make_emulator("netns", tmp_path):
            assert "eglm-99-crashed" not in eglm_namespaces()
    finally:
        run(["ip", "netns", "del", "eglm-99-crashed"], check=False)
    assert_nothing_left()


class RunFailedError(Exception):
    """Raised inside the emulator's context, carrying the process it left running in the namespace."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        super().__init__("the run failed")
        self.process = process


async def fail_with_a_process_left_running(workdir: Path, port: int) -> None:
    async with make_emulator("netns", workdir) as emulator:
        link = await emulator.add_edge("edge-1", LinkProfile(), {"grpc": ("127.0.0.1", port)})
        sleeper = await asyncio.create_subprocess_exec(
            *link.command_prefix, sys.executable, "-c", "import time; time.sleep(60)"
        )
        raise RunFailedError(sleeper)


async def test_netns_tears_down_after_an_error_and_stops_processes_left_in_a_namespace(tmp_path: Path) -> None:
    async with sink_server() as sink:
        with pytest.raises(RunFailedError) as failure:
            await fail_with_a_process_left_running(tmp_path, sink.port)
    assert await asyncio.wait_for(failure.value.process.wait(), 10.0) != 0
    assert_nothing_left()
    assert (tmp_path / "link_stats.json").exists()
