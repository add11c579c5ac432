"""netns mode: each edge in its own network namespace; the kernel shapes rate, loss and outages.

Layout: a bridge `eglm-br0` (10.199.0.1/16) on the host; per edge a namespace `eglm-<n>-<id>`
holding one end of a veth pair (10.199.x.y/16), the other end on the bridge. `tc tbf` on the host
end's egress is the down rate, on the namespace end's egress the up rate. nftables in the namespace
drops `loss` of the packets each way (`numgen random`) and, during an outage window, every packet
(rules added at the window's start and flushed at its end by a task on the proxy loop). This kernel
has no netem, so delay and jitter come from the userspace proxy, listening on 10.199.0.1 for the
edge and forwarding to the real upstream on loopback. One emulator per machine at a time (a lock
file): the holder removes a crashed run's `eglm-*` leftovers first, and everything it made at exit;
`machine_lock()` holds it for whoever checks that nothing was left (no emulator can be running then).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sim.link.emulator import EdgeLink, LinkMode, LinkStats, ProxyEmulator, proxy_stats
from sim.link.profile import SEGMENT_BYTES, LinkProfile
from sim.link.proxy import EdgeProxy
from sim.link.shaper import LinkClock

log = logging.getLogger(__name__)

PREFIX = "eglm-"
BRIDGE = "eglm-br0"
BRIDGE_ADDRESS = "10.199.0.1"
PREFIX_LENGTH = 16
TABLE = "eglm"
LOCK_PATH = Path("/run/lock/eglm-link.lock") if Path("/run/lock").is_dir() else Path("/tmp/eglm-link.lock")
LOCK_TIMEOUT_S = 120.0
COMMAND_TIMEOUT_S = 15.0
# Queue a tbf may hold before dropping: TCP's own congestion control takes it from there.
TBF_LATENCY = "200ms"
MAX_EDGES = 65_000
# An Ethernet frame of a full TCP segment (1448 payload + 32 TCP + 20 IP + 14 Ethernet) per payload byte.
WIRE_PER_PAYLOAD = (SEGMENT_BYTES + 66) / SEGMENT_BYTES


# The reason netns_available() gives when root and the tools are there but the kernel or container refuses.
NAMESPACES_REFUSED = "cannot create a network namespace with nftables here"


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def run(args: list[str], stdin: str | None = None, check: bool = True) -> str:
    """Run a network command (blocking); raises with its stderr when it fails and `check`."""
    binary = _tool(args[0]) or args[0]
    done = subprocess.run(
        [binary, *args[1:]], input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def netns_available() -> tuple[bool, str]:
    """Whether netns mode can run here (root, ip, tc and nft present, a namespace can be made), and why not."""
    if os.geteuid() != 0:
        return False, "netns link emulation needs root (it creates namespaces, veth pairs, tc and nftables rules)"
    missing = [tool for tool in ("ip", "tc", "nft") if _tool(tool) is None]
    if missing:
        return False, f"{', '.join(missing)} missing: run `make netns-tools` (apt-get install iproute2 nftables)"
    probe = f"eglmprobe-{os.getpid()}"  # not `eglm-`: a running emulator's cleanup must not take it
    try:
        run(["ip", "netns", "add", probe])
        run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"])
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{NAMESPACES_REFUSED}: {exc}"
    finally:
        run(["ip", "netns", "del", probe], check=False)
    return True, "root, ip, tc and nft present; namespaces can be created"


def remove_leftovers() -> list[str]:
    """Delete every `eglm-*` namespace and link (a crashed run's); returns what was removed."""
    removed = []
    for line in run(["ip", "netns", "list"]).splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX):
            _kill_processes(name)
            run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    for line in run(["ip", "-o", "link", "show"]).splitlines():
        match = re.match(r"\d+: ([^:@]+)", line)
        if match and match.group(1).startswith(PREFIX):
            run(["ip", "link", "del", match.group(1)], check=False)
            removed.append(match.group(1))
    return removed


def _open_lock() -> int:
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    return os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock_busy() -> RuntimeError:
    return RuntimeError(f"another netns link emulator holds {LOCK_PATH} for more than {LOCK_TIMEOUT_S:.0f} s")


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the lock every emulator holds for its whole life (waiting up to LOCK_TIMEOUT_S for a running one).

    While it is held no emulator runs on this machine, so any `eglm-*` object there is a leftover.
    """
    fd = _open_lock()
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise _lock_busy()
            time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the flock


def eglm_namespaces() -> list[str]:
    """The `eglm-*` namespaces that exist now."""
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]
    return [name for name in names if name.startswith(PREFIX)]


def _kill_processes(namespace: str) -> None:
    """Processes still in a namespace being removed: SIGTERM, then SIGKILL after 2 s."""
    pids = [int(p) for p in run(["ip", "netns", "pids", namespace], check=False).split()]
    if not pids:
        return
    log.warning("namespace %s still runs %s at teardown; terminating them", namespace, pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
            time.sleep(0.05)


def edge_address(index: int) -> str:
    """10.199.x.y of the index-th edge (1-based), skipping the network and bridge addresses."""
    host = index + 1
    return f"10.199.{host >> 8}.{host & 255}"


def nft_rules(interface: str, loss: float) -> str:
    """The edge namespace's table: counters on the veth, random loss each way, an empty outage chain."""
    threshold = round(loss * 1000)
    lines = [f"table inet {TABLE} {{", "  chain outage {", "  }"]
    for chain, hook, match in (("egress", "output", "oifname"), ("ingress", "input", "iifname")):
        lines += [
            f"  chain {chain} {{",
            f"    type filter hook {hook} priority filter; policy accept;",
            f'    {match} "{interface}" counter jump outage comment "total"',
        ]
        if threshold > 0:
            lines.append(f'    {match} "{interface}" numgen random mod 1000 < {threshold} counter drop comment "loss"')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def read_counters(namespace: str) -> dict[str, int]:
    """Packets counted by each commented rule of the namespace's table, summed per comment."""
    listing = json.loads(run(["ip", "netns", "exec", namespace, "nft", "-j", "list", "table", "inet", TABLE]))
    counts: dict[str, int] = {}
    for item in listing.get("nftables", []):
        rule: dict[str, Any] | None = item.get("rule")
        if rule is None or "comment" not in rule:
            continue
        packets = sum(e["counter"]["packets"] for e in rule.get("expr", []) if "counter" in e)
        counts[rule["comment"]] = counts.get(rule["comment"], 0) + packets
    return counts


class NetnsEdge:
    """One edge's namespace, its counters, and its outage scheduler."""

    def __init__(self, index: int, edge_id: str, profile: LinkProfile, proxy: EdgeProxy, clock: LinkClock) -> None:
        """Names only; create() makes the kernel objects."""
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", edge_id)[:20]
        self.namespace = f"{PREFIX}{index}-{slug}"
        self.host_interface = f"{PREFIX}h{index}"
        self.interface = f"{PREFIX}n{index}"
        self.address = edge_address(index)
        self.profile = profile
        self.proxy = proxy
        self.clock = clock
        self.outage_syn_dropped = 0
        self.outage_dropped = 0
        self.outages_applied = 0
        self.in_outage = False
        self._final: dict[str, int] | None = None

    def create(self) -> None:
        """Namespace, veth pair on the bridge, tbf each way, nftables table (blocking commands)."""
        ns = self.namespace
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", self.host_interface, "type", "veth", "peer", "name", self.interface, "netns", ns])
        # One packet per skb (no GSO aggregates) so tbf and the nftables counters see real packets.
        run(["ip", "link", "set", self.host_interface, "gso_max_segs", "1"])
        run(["ip", "-n", ns, "link", "set", self.interface, "gso_max_segs", "1"])
        run(["ip", "link", "set", self.host_interface, "master", BRIDGE, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{self.address}/{PREFIX_LENGTH}", "dev", self.interface])
        run(["ip", "-n", ns, "link", "set", self.interface, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        for rate, device, netns in (
            (self.profile.down_kbit, self.host_interface, []),
            (self.profile.up_kbit, self.interface, ["-n", ns]),
        ):
            if rate is not None:
                burst_bytes = int(self.profile.burst_bits(rate) / 8)
                # tbf counts whole frames; scaled so full-size segments carry the profile's rate in payload,
                # as the inproc shaper does (small packets pay their headers on top).
                wire_kbit = rate * WIRE_PER_PAYLOAD
                tbf = ["tbf", "rate", f"{wire_kbit:.3f}kbit", "burst", str(burst_bytes), "latency", TBF_LATENCY]
                run(["tc", *netns, "qdisc", "replace", "dev", device, "root", *tbf])
        run(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=nft_rules(self.interface, self.profile.loss))

    def start_outage(self) -> None:
        """Drop every packet of the edge's veth, counting SYNs apart (connections refused)."""
        ns = self.namespace
        base = ["ip", "netns", "exec", ns, "nft", "add", "rule", "inet", TABLE, "outage"]
        run([*base, "tcp", "flags", "&", "(syn|ack)", "==", "syn", "counter", "drop", "comment", '"outage_syn"'])
        run([*base, "counter", "drop", "comment", '"outage_all"'])
        self.in_outage = True
        self.outages_applied += 1

    def end_outage(self) -> None:
        """Count what the window dropped, then remove its rules."""
        counts = read_counters(self.namespace)
        self.outage_syn_dropped += counts.get("outage_syn", 0)
        self.outage_dropped += counts.get("outage_syn", 0) + counts.get("outage_all", 0)
        run(["ip", "netns", "exec", self.namespace, "nft", "flush", "chain", "inet", TABLE, "outage"])
        self.in_outage = False

    async def schedule_outages(self, t0: float) -> None:
        """Apply each window at its time after `t0` (runs on the proxy loop; commands in an executor)."""
        loop = asyncio.get_running_loop()
        for outage in sorted(self.profile.outages, key=lambda o: o.start_s):
            await asyncio.sleep(max(0.0, t0 + outage.start_s - time.monotonic()))
            await loop.run_in_executor(None, self.start_outage)
            await asyncio.sleep(max(0.0, t0 + outage.end_s - time.monotonic()))
            await loop.run_in_executor(None, self.end_outage)

    def freeze(self) -> None:
        """Keep the final counters (before the namespace goes), including a window still open."""
        try:
            if self.in_outage:
                self.end_outage()
            self._final = read_counters(self.namespace)
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            log.error("namespace %s: could not read final counters: %s", self.namespace, exc)

    def stats(self) -> LinkStats:
        """Proxy byte counts and series, kernel packet counts."""
        counts = self._final
        if counts is None:
            try:
                counts = read_counters(self.namespace)
            except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
                log.error("namespace %s: could not read counters: %s", self.namespace, exc)
                counts = {}
        return proxy_stats(
            self.proxy,
            self.clock,
            "netns",
            segments=counts.get("total", 0),
            segments_lost=counts.get("loss", 0),
            refused_during_outage=self.outage_syn_dropped,
            outage_packets_dropped=self.outage_dropped,
            outages_applied=self.outages_applied,
        )


class NetnsEmulator(ProxyEmulator):
    """Namespaces, veth, tc and nftables for rate, loss and outages; the proxy for delay and jitter."""

    mode: LinkMode = "netns"
    listen_host = BRIDGE_ADDRESS

    def __init__(self, workdir: Path, seed: int = 0) -> None:
        """Nothing is created before `async with`."""
        super().__init__(workdir, seed)
        self.edges: list[NetnsEdge] = []
        self._lock_fd: int | None = None
        self._schedulers: list[concurrent.futures.Future[None]] = []

    async def __aenter__(self) -> Self:
        """Take the machine-wide lock, remove leftovers, make the bridge, start the proxy thread."""
        ok, reason = netns_available()
        if not ok:
            raise RuntimeError(f"netns link emulation is not available: {reason}")
        await self._acquire_lock()
        try:
            loop = asyncio.get_running_loop()
            removed = await loop.run_in_executor(None, remove_leftovers)
            if removed:
                log.warning("removed leftovers of an earlier run: %s", ", ".join(removed))
            await loop.run_in_executor(None, self._make_bridge)
            await super().__aenter__()
        except BaseException:
            await self._teardown()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Remove every namespace, link and rule, even when the run failed."""
        await self._teardown()

    async def add_edge(self, edge_id: str, profile: LinkProfile, upstreams: dict[str, tuple[str, int]]) -> EdgeLink:
        """A namespace for the edge, shaped by the kernel, and a delay proxy per upstream on the bridge."""
        if len(self.edges) >= MAX_EDGES:
            raise ValueError(f"netns mode addresses at most {MAX_EDGES} edges in 10.199.0.0/16")
        proxy = self._proxy_for(edge_id, profile, shape_rate_and_loss=False)
        edge = NetnsEdge(len(self.edges) + 1, edge_id, profile, proxy, self.clock)
        self.edges.append(edge)
        await asyncio.get_running_loop().run_in_executor(None, edge.create)
        addresses = await self._listen_all(proxy, upstreams, self.listen_host)
        if self.clock.t0 is not None:
            self._schedule_outages(edge, self.clock.t0)
        link = EdgeLink(edge_id, addresses, ["ip", "netns", "exec", edge.namespace], edge, edge_host=edge.address)
        self.links[edge_id] = link
        return link

    def start_clock(self) -> None:
        """t=0 for every link; (re)starts the outage schedulers of the edges added so far."""
        super().start_clock()
        assert self.clock.t0 is not None
        for future in self._schedulers:
            future.cancel()
        self._schedulers.clear()
        for edge in self.edges:
            if edge.in_outage:  # a restart mid-window: that window's rules go with the old schedule
                edge.end_outage()
            self._schedule_outages(edge, self.clock.t0)

    def _schedule_outages(self, edge: NetnsEdge, t0: float) -> None:
        if edge.profile.outages and self._thread is not None:
            self._schedulers.append(asyncio.run_coroutine_threadsafe(edge.schedule_outages(t0), self._thread.loop))

    def _make_bridge(self) -> None:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LENGTH}", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])

    async def _acquire_lock(self) -> None:
        fd = _open_lock()
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                os.close(fd)
                raise _lock_busy()
            await asyncio.sleep(0.2)
        self._lock_fd = fd

    def _remove_all(self) -> None:
        for edge in self.edges:
            _kill_processes(edge.namespace)
            run(["ip", "netns", "del", edge.namespace], check=False)
        run(["ip", "link", "del", BRIDGE], check=False)

    async def _teardown(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for future in self._schedulers:
                future.cancel()
            await loop.run_in_executor(None, self._freeze_all)
            await self._close_proxies()
        finally:
            try:
                await loop.run_in_executor(None, self._remove_all)
            finally:
                self._write_stats()
                if self._lock_fd is not None:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = None

    def _freeze_all(self) -> None:
        for edge in self.edges:
            edge.freeze()
