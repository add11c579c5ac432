"""How faithfully the link emulator shapes, and how much it can carry.

Run as ``python -m bench.link --out bench/results/link.json``. Per mode (inproc; netns when root):
payload goodput against the configured rate (from the proxy's own delivery times), the round trip
it adds on a configured RTT (ping-pong of one byte from a client; in netns mode the client runs in
the edge's namespace), and for inproc the most an unshaped proxy moves per second on this machine.
Rounds are repeated and medians reported, since the machine is shared.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sim.link import LinkProfile, make_emulator, netns_available
from sim.link.emulator import LinkMode
from tests.helpers.link_servers import echo_server, pattern, sink_server, source_server

app = typer.Typer(add_completion=False)

# The edge side, run with the link's command prefix: `send SIZE`, `recv SIZE` (reads until the server
# closes) or `ping COUNT` (prints round trips).
CLIENT = """
import json, socket, sys, time
host, port, what, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.create_connection((host, port), timeout=30)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if what == "send":
    s.sendall((bytes(range(251)) * (n // 251 + 1))[:n])
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
elif what == "recv":
    got = 0
    while chunk := s.recv(65536):
        got += len(chunk)
    print(got)
else:
    trips = []
    for _ in range(n):
        t = time.monotonic(); s.sendall(b"p"); s.recv(1); trips.append(time.monotonic() - t)
    print(json.dumps(trips))
s.close()
"""


async def run_client(prefix: list[str], address: tuple[str, int], what: str, n: int) -> str:
    """The client through `prefix`; its stdout."""
    process = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-c", CLIENT, address[0], str(address[1]), what, str(n), stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 120.0)
    if process.returncode != 0:
        raise RuntimeError(f"bench client exited with {process.returncode}")
    return stdout.decode()


async def goodput(mode: LinkMode, rate_kbit: float, seconds: float, workdir: Path) -> float:
    """Measured payload rate / configured rate for one transfer of about `seconds` at the rate."""
    size = int(rate_kbit * 1000 / 8 * seconds)
    async with sink_server() as sink, make_emulator(mode, workdir) as emulator:
        link = await emulator.add_edge("bench", LinkProfile(up_kbit=rate_kbit), {"grpc": ("127.0.0.1", sink.port)})
        emulator.start_clock()
        await run_client(link.command_prefix, link.addresses["grpc"], "send", size)
        stats = link.stats()
    if stats.up_active_s is None or bytes(sink.connections[0].data) != pattern(size):
        raise RuntimeError(f"{mode}: the transfer did not arrive intact")
    first, last = stats.up_active_s
    burst_bytes = LinkProfile().burst_bits(rate_kbit) / 8
    return (size - burst_bytes) * 8 / (last - first) / (rate_kbit * 1000)


async def down_goodput(mode: LinkMode, rate_kbit: float, seconds: float, workdir: Path) -> float:
    """Measured payload rate / configured down rate for one download of about `seconds` at the rate."""
    size = int(rate_kbit * 1000 / 8 * seconds)
    async with source_server(pattern(size)) as port, make_emulator(mode, workdir) as emulator:
        link = await emulator.add_edge("bench", LinkProfile(down_kbit=rate_kbit), {"grpc": ("127.0.0.1", port)})
        emulator.start_clock()
        got = int(await run_client(link.command_prefix, link.addresses["grpc"], "recv", size))
        stats = link.stats()
    if stats.down_active_s is None or got != size:
        raise RuntimeError(f"{mode}: the download did not arrive whole ({got} of {size} bytes)")
    first, last = stats.down_active_s
    burst_bytes = LinkProfile().burst_bits(rate_kbit) / 8
    return (size - burst_bytes) * 8 / (last - first) / (rate_kbit * 1000)


async def added_rtt_ms(mode: LinkMode, rtt_ms: float, pings: int, workdir: Path) -> float:
    """Median round trip of one byte through a link configured with `rtt_ms`, minus that configuration."""
    async with echo_server() as port, make_emulator(mode, workdir) as emulator:
        link = await emulator.add_edge("bench", LinkProfile(rtt_ms=rtt_ms), {"grpc": ("127.0.0.1", port)})
        trips = json.loads(await run_client(link.command_prefix, link.addresses["grpc"], "ping", pings))
    return float(statistics.median(trips)) * 1000 - rtt_ms


async def unshaped_mb_per_s(size: int, workdir: Path) -> float:
    """Payload MB/s through an inproc proxy with no rate, delay or loss."""
    async with sink_server() as sink, make_emulator("inproc", workdir) as emulator:
        link = await emulator.add_edge("bench", LinkProfile(), {"grpc": ("127.0.0.1", sink.port)})
        started = time.perf_counter()
        await run_client([], link.addresses["grpc"], "send", size)
        elapsed = time.perf_counter() - started
    return size / elapsed / 1e6


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def benchmark(rates: list[float], seconds: float, rtt_ms: float, rounds: int, workdir: Path) -> dict[str, Any]:
    """Every measurement, `rounds` times, in every mode available."""
    modes: list[LinkMode] = ["inproc"]
    netns_ok, netns_reason = netns_available()
    if netns_ok:
        modes.append("netns")
    results: dict[str, Any] = {}
    for mode in modes:
        per_rate, down_per_rate = {}, {}
        for rate in rates:
            per_rate[f"{rate:g}"] = spread([await goodput(mode, rate, seconds, workdir) for _ in range(rounds)])
            down_per_rate[f"{rate:g}"] = spread(
                [await down_goodput(mode, rate, seconds, workdir) for _ in range(rounds)]
            )
        rtt = spread([await added_rtt_ms(mode, rtt_ms, 20, workdir) for _ in range(rounds)])
        results[mode] = {
            "goodput_over_rate_by_kbit": per_rate,
            "down_goodput_over_rate_by_kbit": down_per_rate,
            f"added_rtt_ms_minus_{rtt_ms:g}": rtt,
        }
    results["inproc"]["unshaped_mb_per_s"] = spread(
        [await unshaped_mb_per_s(64_000_000, workdir) for _ in range(rounds)]
    )
    return {
        "machine": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": list(os.getloadavg()),
        },
        "settings": {"rates_kbit": rates, "seconds_per_transfer": seconds, "rtt_ms": rtt_ms, "rounds": rounds},
        "netns": "measured" if netns_ok else f"skipped: {netns_reason}",
        "modes": results,
    }


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench/results/link.json"),
    rates: Annotated[str, typer.Option(help="Comma-separated up rates in kbit/s.")] = "500,2000,8000",
    seconds: Annotated[float, typer.Option(min=1.0, max=60.0, help="Length of each transfer at its rate.")] = 3.0,
    rtt_ms: Annotated[float, typer.Option(min=1.0, max=2000.0, help="Configured RTT for the delay check.")] = 100.0,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Rounds; medians are reported.")] = 3,
) -> None:
    """Measure the link emulator's rate accuracy, added delay and unshaped throughput."""
    console = Console(stderr=True)
    rate_list = [float(r) for r in rates.split(",")]
    with tempfile.TemporaryDirectory() as temp, console.status("link emulator: goodput, delay, throughput"):
        report = asyncio.run(benchmark(rate_list, seconds, rtt_ms, rounds, Path(temp)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for mode, figures in report["modes"].items():
        rates_text = ", ".join(f"{k} kbit {v['median']:.3f}" for k, v in figures["goodput_over_rate_by_kbit"].items())
        console.print(f"{mode}: goodput/rate {rates_text}; written to {out}")


if __name__ == "__main__":
    app()
