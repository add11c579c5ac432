"""Link emulation for the simulation harness: each edge's bandwidth, delay, jitter, loss and outages.

Usage (the scenario runner)::

    async with make_emulator("inproc", run_dir) as emulator:
        link = await emulator.add_edge("edge-1", LinkProfile(up_kbit=2000, rtt_ms=80, outages=[...]),
                                       {"grpc": ("127.0.0.1", cloud_port), "mqtt": ("127.0.0.1", broker_port)})
        emulator.start_clock()                       # t=0 of every outage window and of the series
        start the edge with link.command_prefix + [...], pointing at link.addresses["grpc"] / ["mqtt"]
        ...
        link.stats()                                 # LinkStats: bytes, segments, loss, outages, series

Modes, same `LinkProfile`:

- `inproc`: an asyncio TCP proxy per (edge, upstream) on 127.0.0.1 port 0, in a thread of its own.
  Per direction a token bucket at the rate (depth `burst_kbit`, default 20 ms at the rate), a
  one-way delay of rtt/2 plus uniform jitter that never reorders bytes, loss per 1448-byte segment
  as a retransmission delay (RTO = max(200 ms, rtt + 4 * jitter)) since TCP would resend it, and
  outage windows during which nothing is delivered and new connections are held, not connected.
- `netns` (root; this kernel has no netem): each edge in a network namespace `eglm-<n>-<id>` on a
  veth pair bridged to `eglm-br0` (10.199.0.1/16), rate by `tc tbf` on each veth's egress, loss and
  outages by nftables in the edge's namespace, delay and jitter by the same proxy listening on
  10.199.0.1. Start the edge with `command_prefix` (`ip netns exec <ns>`). One netns emulator runs
  at a time on a machine (a lock file); it removes a crashed run's `eglm-*` leftovers at start and
  everything it made at exit. tbf runs at rate x 1514/1448 so that full-size segments carry the
  profile's rate in TCP payload, as in inproc mode. `segments` / `segments_lost` are then kernel
  packets (GSO is off on the veth) and `refused_during_outage` counts SYNs dropped in a window.

Rates are TCP payload in kbit/s (1000 bit/s). The inproc shaper lives in a Python thread: a stall of
that thread longer than the bucket depth (20 ms by default) is capacity lost, so on a loaded machine
its goodput can fall a few percent below the rate at high rates (`python -m bench.link` measures it).

`EdgeLink.edge_host` is where the harness reaches a port the edge listens on (its namespace address in
netns mode). `LinkStats.up_series_bytes` / `down_series_bytes` are bytes delivered per second since
start_clock(); at exit the emulator writes every link's stats to `workdir/link_stats.json`.
"""

from sim.link.emulator import EdgeLink, LinkEmulator, LinkStats, make_emulator, netns_available
from sim.link.profile import LinkProfile, Outage

__all__ = ["EdgeLink", "LinkEmulator", "LinkProfile", "LinkStats", "Outage", "make_emulator", "netns_available"]
