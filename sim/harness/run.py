"""Running one scenario: the world once, then every mode as real processes over emulated links.

For each mode a fresh cloud process (and mosquitto when a group speaks MQTT) starts with the mode's
fleet policy; every edge is a real agent process whose uplink goes through its emulated link; the
clips play in real time; while they play the cloud's policies are polled (to plot the band); when
the agents have finished and drained, the cloud's metrics are read and everything is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import Progress, TaskID

from sim.fleet.broker import mosquitto_binary, start_mosquitto
from sim.fleet.run import free_port, start, stop_process, tail, wait_http
from sim.fleet.summary import CameraRun
from sim.link.emulator import EdgeLink, make_emulator
from sim.scenarios.modes import closed_loop, mode_edge_settings, mode_policy
from sim.scenarios.spec import ModeName, Scenario
from sim.world.clips import ClipSpec, write_clip

EDGE_MODEL = Path(__file__).resolve().parents[1] / "models" / "edge.onnx"
POLL_INTERVAL_S = 2.0


@dataclass
class ModeRun:
    """What one mode's run left behind, for the report."""

    mode: ModeName
    folder: Path
    wall_s: float
    edge_summaries: dict[str, dict[str, Any]]
    link_stats: dict[str, dict[str, Any]]
    cloud_metrics: dict[str, float]
    cloud_received: dict[str, int]
    band_history: list[dict[str, Any]] = field(default_factory=list)
    # The closed loop's policy versions: {"t": seconds since the edges started, "version", "reason"}.
    loop_moves: list[dict[str, Any]] = field(default_factory=list)
    # The closed loop's state at the end (GET /api/closed-loop), for where each rule stands and why.
    loop_state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModeHooks:
    """What a scenario adds to one mode's run: cloud.yaml sections, and work done while the clips play."""

    cloud_sections: dict[str, Any] = field(default_factory=dict)
    # Started once every agent runs, with the admin URL and each edge's edge.yaml; cancelled when they end.
    during: Callable[[str, dict[str, Path]], Coroutine[Any, Any, None]] | None = None


def generate_world(scenario: Scenario, out: Path, console: Console) -> list[CameraRun]:
    """One clip per camera of every edge (each camera its own scene), shared by every mode."""
    cameras = []
    index = 0
    with console.status("generating camera clips") as status:
        for edge_id, group in scenario.edge_ids():
            for number, camera in enumerate(group.cameras):
                folder = out / "world" / edge_id / f"cam{number}"
                spec = ClipSpec(
                    seed=scenario.seed,
                    camera=index,
                    seconds=scenario.duration_s,
                    fps=camera.fps,
                    mean_gap_seconds=camera.mean_gap_seconds,
                    small_fraction=camera.small_fraction,
                    night=camera.night,
                    quiet_start_seconds=camera.quiet_start_seconds,
                    drift_at_s=camera.drift.at_s if camera.drift is not None else None,
                    drift_to=camera.drift.to if camera.drift is not None else "night",
                )
                if not (folder / "clip.json").exists():
                    status.update(f"generating camera clips: {edge_id}/cam{number}")
                    write_clip(spec, folder)
                cameras.append(CameraRun(edge_id, f"cam{number}", folder))
                index += 1
    return cameras


def cloud_settings(scenario: Scenario, mode: ModeName, folder: Path, ports: dict[str, int]) -> dict[str, Any]:
    """The cloud.yaml of one mode."""
    cloud = scenario.cloud
    backend: dict[str, Any]
    if cloud.backend == "onnx":
        backend = {"kind": "onnx", "model_path": str(cloud.onnx_model), "intra_op_threads": 1}
    elif cloud.backend == "glm":
        backend = {"kind": "glm", "model_path": str(cloud.glm_model)}
    else:
        truth = {
            f"{edge_id}/cam{n}": str(folder.parent.parent / "world" / edge_id / f"cam{n}")
            for edge_id, group in scenario.edge_ids()
            for n in range(len(group.cameras))
        }
        backend = {
            "kind": "oracle",
            "ground_truth": truth,
            "delay_ms": cloud.oracle_delay_ms,
            "jitter_ms": cloud.oracle_jitter_ms,
            "seed": scenario.seed,
        }
    policy: dict[str, Any] = {
        "signing_key": str(folder.parent.parent / "keys" / "policy-signing.key"),
        "fleet": mode_policy(mode, scenario),
    }
    loop = closed_loop(mode, scenario)
    if loop is not None:
        policy["closed_loop"] = loop
    return {
        "mqtt": {"enabled": "mqtt" in ports, "host": "127.0.0.1", "port": ports.get("mqtt", 1883)},
        "server": {"host": "127.0.0.1", "port": ports["grpc"]},
        "admin": {"host": "127.0.0.1", "port": ports["admin"]},
        "backend": backend,
        "batcher": {"max_batch_size": cloud.max_batch_size, "max_queue_delay_ms": cloud.max_queue_delay_ms},
        "store": {"path": str(folder / "cloud" / "verdicts.sqlite")},
        "policy": policy,
    }


def edge_settings(
    scenario: Scenario,
    mode: ModeName,
    edge_id: str,
    cameras: list[CameraRun],
    folder: Path,
    link: EdgeLink,
    transport: str,
) -> dict[str, Any]:
    """The edge.yaml of one edge in one mode: its uplink points at its emulated link."""
    host, port = link.addresses[transport]
    uplink: dict[str, Any]
    if transport == "mqtt":
        uplink = {"kind": "mqtt", "host": host, "port": port, "heartbeat_interval_s": 2}
    else:
        uplink = {"target": f"{host}:{port}", "heartbeat_interval_s": 2}
    fps = max((c.fps for g in scenario.edges for c in g.cameras), default=5.0)
    settings = mode_edge_settings(mode)
    return {
        "edge_id": edge_id,
        "site_id": scenario.name,
        "state_dir": str(folder / "edges" / edge_id),
        # On the recording's timeline: a loaded machine slows playback down instead of dropping frames,
        # so every mode detects and decides on the same frames and capture times (only latencies change).
        "cameras": [
            {"id": c.camera_id, "url": str(c.clip / "frames"), "fps_cap": fps, "timeline": "recording"} for c in cameras
        ],
        "detector": {"model_path": str(EDGE_MODEL), "intra_op_threads": 1},
        "model_version": f"world-seed{scenario.seed}",
        "uplink": uplink,
        # The mode's policy from the first frame, not only once the cloud has pushed it.
        "policy": {
            "public_key": str(folder.parent.parent / "keys" / "policy-signing.pub"),
            "initial": mode_policy(mode, scenario),
        },
        # In a namespace loopback is the namespace's own: the health port never collides there.
        "health": {"host": "127.0.0.1", "port": free_port()},
        "pipeline": {"drain_deadline_s": 20, **settings["pipeline"]},
        "tracking": settings["tracking"],
    }


def keygen(out: Path) -> None:
    """The policy signing key pair every mode's cloud signs with."""
    if not (out / "keys" / "policy-signing.key").exists():
        subprocess.run(
            [sys.executable, "-m", "cloud", "keygen", "--out", str(out / "keys")], check=True, capture_output=True
        )


async def run_mode(
    scenario: Scenario,
    mode: ModeName,
    out: Path,
    cameras: list[CameraRun],
    progress: Progress,
    task: TaskID,
    hooks: ModeHooks | None = None,
) -> ModeRun:
    """One mode from start to finish; every process is stopped whatever happens."""
    folder = out / "modes" / mode
    (folder / "config").mkdir(parents=True, exist_ok=True)
    logs = folder / "logs"
    uses_mqtt = any(g.transport == "mqtt" for g in scenario.edges)
    if uses_mqtt and mosquitto_binary() is None:
        raise RuntimeError("the scenario has MQTT edges but mosquitto is not installed (make setup installs it)")
    ports = {"grpc": free_port(), "admin": free_port()} | ({"mqtt": free_port()} if uses_mqtt else {})
    processes: list[subprocess.Popen[bytes]] = []
    edges: dict[str, subprocess.Popen[bytes]] = {}
    history: list[dict[str, Any]] = []
    started_at = time.time()
    try:
        if uses_mqtt:
            processes.append(start_mosquitto(folder / "broker", ports["mqtt"]))
        cloud_yaml = folder / "config" / "cloud.yaml"
        extra = hooks.cloud_sections if hooks is not None else {}
        cloud_yaml.write_text(yaml.safe_dump(cloud_settings(scenario, mode, folder, ports) | extra, sort_keys=False))
        cloud = start(["cloud", "serve", "--config", str(cloud_yaml)], logs / "cloud.log")
        processes.append(cloud)
        admin = f"http://127.0.0.1:{ports['admin']}"
        await asyncio.to_thread(wait_http, f"{admin}/healthz", time.monotonic() + 180, cloud, logs / "cloud.log")
        upstreams = {name: ("127.0.0.1", port) for name, port in ports.items() if name in ("grpc", "mqtt")}
        async with make_emulator(scenario.link_mode, folder / "links", seed=scenario.seed) as emulator:
            links = {
                edge_id: await emulator.add_edge(edge_id, scenario.link_for(group), upstreams)
                for edge_id, group in scenario.edge_ids()
            }
            emulator.start_clock()
            started_at = time.time()
            for edge_id, group in scenario.edge_ids():
                own = [c for c in cameras if c.edge_id == edge_id]
                settings = edge_settings(scenario, mode, edge_id, own, folder, links[edge_id], group.transport)
                path = folder / "config" / f"{edge_id}.yaml"
                path.write_text(yaml.safe_dump(settings, sort_keys=False))
                edges[edge_id] = start(
                    ["edge", "run", "--config", str(path)], logs / f"{edge_id}.log", links[edge_id].command_prefix
                )
            processes.extend(edges.values())
            configs = {edge_id: folder / "config" / f"{edge_id}.yaml" for edge_id in edges}
            side = asyncio.create_task(hooks.during(admin, configs)) if hooks and hooks.during else None
            try:
                await _watch(scenario, edges, admin, history, progress, task, logs)
            finally:
                if side is not None:
                    side.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await side  # its own failure is raised here
            link_stats = {edge_id: _stats(link) for edge_id, link in links.items()}
        metrics_text = await asyncio.to_thread(lambda: httpx.get(f"{admin}/metrics", timeout=10).text)
        published = await asyncio.to_thread(
            lambda: httpx.get(f"{admin}/api/policies", params={"limit": 500}, timeout=10).json()["history"]
        )
        loop_state = await asyncio.to_thread(lambda: httpx.get(f"{admin}/api/closed-loop", timeout=10).json())
    finally:
        for process in reversed(processes):
            await asyncio.to_thread(stop_process, process, 30.0)
    wall = time.time() - started_at
    for edge_id, process in edges.items():
        if process.returncode not in (0, None):
            raise RuntimeError(f"{mode}: {edge_id} exited with {process.returncode}:\n{tail(logs / f'{edge_id}.log')}")
    summaries = {e: json.loads((folder / "edges" / e / "summary.json").read_text()) for e in edges}
    return ModeRun(
        mode=mode,
        folder=folder,
        wall_s=wall,
        edge_summaries=summaries,
        link_stats=link_stats,
        cloud_metrics=_cloud_metrics(metrics_text),
        cloud_received=_received(folder / "cloud" / "verdicts.sqlite"),
        band_history=history,
        loop_moves=[
            {
                "t": round(record["created_at"] - started_at, 1),
                "version": record["version"],
                "edge": record.get("scope_id", ""),
                "reason": record["reason"],
            }
            for record in reversed(published)
            if str(record.get("reason", "")).startswith("closed loop")
        ],
        loop_state=loop_state,
    )


async def _watch(
    scenario: Scenario,
    edges: dict[str, subprocess.Popen[bytes]],
    admin: str,
    history: list[dict[str, Any]],
    progress: Progress,
    task: TaskID,
    logs: Path,
) -> None:
    """Until every agent has exited: progress, and the policy bands every few seconds."""
    started = time.monotonic()
    limit = scenario.duration_s * 3 + 180
    next_poll = 0.0
    async with httpx.AsyncClient(timeout=5.0) as client:
        while any(p.poll() is None for p in edges.values()):
            elapsed = time.monotonic() - started
            if elapsed > limit:
                raise TimeoutError(f"edges did not finish within {limit:.0f} s; see the logs in {logs}")
            progress.update(task, completed=min(elapsed, scenario.duration_s))
            if elapsed >= next_poll:
                next_poll = elapsed + POLL_INTERVAL_S
                try:
                    snapshot = (await client.get(f"{admin}/policies")).json()
                    history.append({"t": round(elapsed, 2), "policies": snapshot})
                except (httpx.HTTPError, ValueError):
                    pass  # the cloud may be behind an outage of its own making; the next poll catches up
            await asyncio.sleep(0.5)
    progress.update(task, completed=scenario.duration_s)


def _stats(link: EdgeLink) -> dict[str, Any]:
    return link.stats().model_dump(mode="json")


CLOUD_METRICS = {
    "model_seconds": "edgeglm_inference_compute_infer_duration_seconds_sum",
    "batches": "edgeglm_inference_exec_count_total",
    "inferences": "edgeglm_inference_request_success_total",
    "samples_received": "edgeglm_cloud_samples_received_total",
    "samples_duplicate": "edgeglm_cloud_samples_duplicate_total",
    "bad_messages": "edgeglm_cloud_bad_messages_total",
}


def _cloud_metrics(text: str) -> dict[str, float]:
    """The CLOUD_METRICS samples of a /metrics text, each summed over its label sets."""
    totals = dict.fromkeys(CLOUD_METRICS, 0.0)
    keys = {name: key for key, name in CLOUD_METRICS.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in keys:
                totals[keys[sample.name]] += float(sample.value)
    return totals


def _received(store: Path) -> dict[str, int]:
    """Distinct samples the cloud received, per edge (its idempotency records)."""
    if not store.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT edge_id, COUNT(*) FROM verdicts GROUP BY edge_id").fetchall()
    return {str(edge): int(count) for edge, count in rows}
