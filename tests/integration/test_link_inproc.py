"""The inproc link emulator against real TCP servers on loopback: rate, delay and order, outages, loss.

Rates are asserted as limits only (never exceeded, by more than the tolerance): a loaded machine can slow
the proxy down but not speed it up. How close a link comes to its rate is measured by `make bench`
(bench.link's goodput), and the shaping rules on explicit times by tests/unit/test_link_shaper.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from pathlib import Path

import pytest

from sim.link import LinkProfile, LinkStats, Outage, make_emulator
from tests.helpers.link_servers import echo_server, numbered, pattern, sink_server, source_server

pytestmark = pytest.mark.slow

TOLERANCE = 0.15  # over the configured rate


async def send_all(address: tuple[str, int], payload: bytes, chunk: int = 16384) -> None:
    """Connect, write `payload` in chunks, half-close and wait for the peer to close."""
    reader, writer = await asyncio.open_connection(*address)
    for i in range(0, len(payload), chunk):
        writer.write(payload[i : i + chunk])
        await writer.drain()
    writer.write_eof()
    await asyncio.wait_for(reader.read(), 20.0)
    writer.close()
    await writer.wait_closed()


def full_seconds_rate(series: list[int]) -> float:
    """Bytes per second over the series' full seconds (the last one is partial)."""
    full = series[:-1]
    assert len(full) >= 2, series
    return sum(full) / len(full)


async def test_rate_limit_holds(tmp_path: Path) -> None:
    payload = pattern(400_000)
    async with sink_server() as sink, make_emulator("inproc", tmp_path) as emulator:
        link = await emulator.add_edge("e1", LinkProfile(up_kbit=1000.0), {"grpc": ("127.0.0.1", sink.port)})
        emulator.start_clock()
        await asyncio.wait_for(send_all(link.addresses["grpc"], payload), 15.0)
        await asyncio.wait_for(sink.connections[0].closed.wait(), 5.0)
        stats = link.stats()
    assert bytes(sink.connections[0].data) == payload
    assert stats.bytes_up == len(payload)
    assert sum(stats.up_series_bytes) == len(payload)
    # 1000 kbit/s = 125,000 bytes/s, measured on the proxy's own delivery times.
    assert full_seconds_rate(stats.up_series_bytes) <= 125_000 * (1 + TOLERANCE)
    assert stats.connections == 1


async def test_down_rate_limit_holds_and_leaves_the_up_direction_alone(tmp_path: Path) -> None:
    payload = pattern(300_000)
    async with source_server(payload) as port, make_emulator("inproc", tmp_path) as emulator:
        link = await emulator.add_edge("e1", LinkProfile(down_kbit=800.0), {"grpc": ("127.0.0.1", port)})
        emulator.start_clock()
        reader, writer = await asyncio.open_connection(*link.addresses["grpc"])
        received = await asyncio.wait_for(reader.read(), 15.0)
        writer.close()
        stats = link.stats()
    assert received == payload
    assert (stats.bytes_down, stats.bytes_up) == (len(payload), 0)
    assert stats.down_active_s is not None
    first, last = stats.down_active_s
    burst_bytes = LinkProfile().burst_bits(800.0) / 8
    # 800 kbit/s = 100,000 bytes/s on the proxy's delivery times; the first burst leaves at once.
    assert (len(payload) - burst_bytes) / (last - first) <= 100_000 * (1 + TOLERANCE)
    assert full_seconds_rate(stats.down_series_bytes) <= 100_000 * (1 + TOLERANCE)


async def test_two_upstreams_of_one_edge_share_its_rate(tmp_path: Path) -> None:
    payload = pattern(200_000)
    async with sink_server() as grpc_sink, sink_server() as mqtt_sink, make_emulator("inproc", tmp_path) as emulator:
        upstreams = {"grpc": ("127.0.0.1", grpc_sink.port), "mqtt": ("127.0.0.1", mqtt_sink.port)}
        link = await emulator.add_edge("e1", LinkProfile(up_kbit=1000.0), upstreams)
        emulator.start_clock()
        await asyncio.wait_for(
            asyncio.gather(send_all(link.addresses["grpc"], payload), send_all(link.addresses["mqtt"], payload)), 15.0
        )
        stats = link.stats()
    assert bytes(grpc_sink.connections[0].data) == payload
    assert bytes(mqtt_sink.connections[0].data) == payload
    assert full_seconds_rate(stats.up_series_bytes) <= 125_000 * (1 + TOLERANCE)  # one rate for both, not one each
    assert stats.connections == 2


async def test_delay_adds_the_rtt_and_jitter_never_reorders_bytes(tmp_path: Path) -> None:
    profile = LinkProfile(rtt_ms=200.0, jitter_ms=60.0)
    stream = numbered(3000)
    async with echo_server() as port, make_emulator("inproc", tmp_path) as emulator:
        link = await emulator.add_edge("e1", profile, {"grpc": ("127.0.0.1", port)})
        reader, writer = await asyncio.open_connection(*link.addresses["grpc"])
        round_trips = []
        for _ in range(3):
            started = time.monotonic()
            writer.write(b"p")
            assert await asyncio.wait_for(reader.readexactly(1), 5.0) == b"p"
            round_trips.append(time.monotonic() - started)
        # Many small writes a millisecond apart: each is its own unit with its own jitter draw.
        for i in range(0, len(stream), 40):
            writer.write(stream[i : i + 40])
            await writer.drain()
            await asyncio.sleep(0.001)
        echoed = await asyncio.wait_for(reader.readexactly(len(stream)), 15.0)
        writer.close()
        await writer.wait_closed()
    assert min(round_trips) >= 0.2
    assert echoed == stream


async def test_outage_blocks_traffic_then_releases_all_of_it(tmp_path: Path) -> None:
    window = Outage(start_s=1.0, duration_s=1.5)
    messages = 70  # one every 50 ms for 3.5 s, across the window
    async with sink_server() as sink, make_emulator("inproc", tmp_path) as emulator:
        link = await emulator.add_edge("e1", LinkProfile(outages=[window]), {"grpc": ("127.0.0.1", sink.port)})
        reader, writer = await asyncio.open_connection(*link.addresses["grpc"])
        emulator.start_clock()
        t0 = emulator.clock.t0
        assert t0 is not None
        late: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for i in range(messages):
            writer.write(numbered(i + 1)[-4:] * 256)
            await writer.drain()
            if late is None and time.monotonic() - t0 > 1.5:
                # A new connection inside the window is accepted but not connected upstream yet.
                late = await asyncio.open_connection(*link.addresses["grpc"])
                late[1].write(b"hello")
            await asyncio.sleep(0.05)
        writer.write_eof()
        assert late is not None
        late[1].write_eof()
        for conn in (reader, late[0]):
            await asyncio.wait_for(conn.read(), 10.0)
        writer.close()
        late[1].close()
        stats = link.stats()
    first, second = sink.connections
    inside = [(at, n) for at, n in first.arrivals if t0 + window.start_s + 0.1 <= at < t0 + window.end_s]
    assert inside == []
    assert bytes(first.data) == b"".join(numbered(i + 1)[-4:] * 256 for i in range(messages))
    assert any(at >= t0 + window.end_s for at, _ in first.arrivals)
    assert second.connected_at >= t0 + window.end_s
    assert bytes(second.data) == b"hello"
    assert stats.refused_during_outage == 1
    assert stats.outages_applied == 1
    assert stats.connections == 2


async def test_loss_is_counted_at_the_configured_rate_and_every_byte_arrives(tmp_path: Path) -> None:
    payload = pattern(1_500_000)
    profile = LinkProfile(loss=0.1)
    async with sink_server() as sink, make_emulator("inproc", tmp_path, seed=3) as emulator:
        link = await emulator.add_edge("e1", profile, {"grpc": ("127.0.0.1", sink.port)})
        await asyncio.wait_for(send_all(link.addresses["grpc"], payload), 15.0)
        stats = link.stats()
    data = bytes(sink.connections[0].data)
    assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()
    n = math.ceil(len(payload) / 1448)
    assert stats.segments >= n
    tolerance = 4 * math.sqrt(stats.segments * 0.1 * 0.9)
    assert abs(stats.segments_lost - 0.1 * stats.segments) <= tolerance
    assert stats.segments_lost > 0


async def test_stats_are_written_to_the_workdir_at_exit(tmp_path: Path) -> None:
    async with echo_server() as port, make_emulator("inproc", tmp_path) as emulator:
        link = await emulator.add_edge("edge-a", LinkProfile(rtt_ms=10.0), {"grpc": ("127.0.0.1", port)})
        reader, writer = await asyncio.open_connection(*link.addresses["grpc"])
        writer.write(b"x" * 1000)
        await asyncio.wait_for(reader.readexactly(1000), 5.0)
        writer.close()
        with pytest.raises(ValueError, match="already has a link"):
            await emulator.add_edge("edge-a", LinkProfile(), {"grpc": ("127.0.0.1", port)})
    saved = json.loads((tmp_path / "link_stats.json").read_text())
    assert saved["mode"] == "inproc"
    stats = LinkStats.model_validate(saved["edges"]["edge-a"])
    assert (stats.bytes_up, stats.bytes_down) == (1000, 1000)
    assert link.command_prefix == []


async def test_an_unreachable_upstream_is_counted_and_the_edge_connection_closed(tmp_path: Path) -> None:
    async with echo_server() as port:
        pass  # the port is now closed: nothing listens there
    async with make_emulator("inproc", tmp_path) as emulator:
        link = await emulator.add_edge("e1", LinkProfile(), {"grpc": ("127.0.0.1", port)})
        reader, writer = await asyncio.open_connection(*link.addresses["grpc"])
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.read(), 10.0) == b""
        writer.close()
        stats = link.stats()
    assert (stats.connections, stats.connect_failures, stats.bytes_up) == (1, 1, 0)
