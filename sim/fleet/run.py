"""A fleet on loopback: one cloud process, several edge agent processes, generated camera clips.

This is what `make demo` runs. Each program is started as its user would start it (its own process,
its own YAML file, the public command line), the policy is changed midway through the admin API,
and the run is scored against the clips' ground truth.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console

from sim.fleet.broker import mosquitto_binary, start_mosquitto
from sim.fleet.summary import CameraRun, cloud_only_bytes, percentile, read_jsonl, score_events
from sim.world.clips import ClipSpec, write_clip

MODELS = Path(__file__).resolve().parents[1] / "models"


@dataclass(frozen=True)
class FleetSpec:
    """Size of the demo fleet and of its clips."""

    edges: int = 3
    cameras: int = 2
    seconds: float = 60.0
    fps: float = 5.0
    seed: int = 0
    policy_change_at: float = 0.5  # fraction of the clip length
    jpeg_quality: int = 80


# Ports free_port has handed out in this process (a few per program started).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port nothing listens on right now, and none that this process handed out before.

    A port probed with bind(0) is free again once the probe closes, so the next probe can return it:
    a run takes several before any is bound (a cloud's gRPC and admin ports came out the same).
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def fleet_policy(watch_list: list[str], low: float, high: float, jpeg_quality: int) -> dict[str, Any]:
    """The fleet policy settings the demo starts with and changes to."""
    return {
        "mining": {
            "default_band": {"low": low, "high": high},
            "watch_list": watch_list,
            "random_audit_rate": 0.02,
        },
        "uplink": {"image_mode": "full_frame", "jpeg_quality": jpeg_quality},
    }


def cloud_yaml(out: Path, grpc_port: int, admin_port: int, spec: FleetSpec, mqtt_port: int | None) -> dict[str, Any]:
    """The cloud's config: the reference detector behind the dynamic batcher; the MQTT bridge when a broker runs."""
    reference = MODELS / "reference.onnx"
    return {
        "mqtt": {"enabled": mqtt_port is not None, "host": "127.0.0.1", "port": mqtt_port or 1883},
        "server": {"host": "127.0.0.1", "port": grpc_port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "backend": {"kind": "onnx", "model_path": str(reference), "intra_op_threads": 1},
        "batcher": {"max_batch_size": 8, "max_queue_delay_ms": 20},
        "store": {"path": str(out / "cloud" / "verdicts.sqlite")},
        "policy": {
            "signing_key": str(out / "keys" / "policy-signing.key"),
            "fleet": fleet_policy(["person", "motorcycle"], 0.25, 0.6, spec.jpeg_quality),
        },
    }


def edge_yaml(
    out: Path, index: int, grpc_port: int, health_port: int, spec: FleetSpec, mqtt_port: int | None = None
) -> dict[str, Any]:
    """One edge's config: its cameras are clip folders played back in real time; gRPC, or MQTT when given a broker."""
    edge_id = f"edge-{index}"
    uplink: dict[str, Any] = {"target": f"127.0.0.1:{grpc_port}", "heartbeat_interval_s": 2}
    if mqtt_port is not None:
        uplink = {"kind": "mqtt", "host": "127.0.0.1", "port": mqtt_port, "heartbeat_interval_s": 2}
    return {
        "edge_id": edge_id,
        "site_id": "demo",
        "state_dir": str(out / "edges" / edge_id),
        "cameras": [
            {"id": f"cam{c}", "url": str(out / "world" / edge_id / f"cam{c}" / "frames"), "fps_cap": spec.fps}
            for c in range(spec.cameras)
        ],
        "detector": {"model_path": str(MODELS / "edge.onnx"), "intra_op_threads": 1},
        "model_version": "world-seed0",
        "uplink": uplink,
        "policy": {"public_key": str(out / "keys" / "policy-signing.pub")},
        "health": {"host": "127.0.0.1", "port": health_port},
        "pipeline": {"drain_deadline_s": 20},
    }


def generate_world(out: Path, spec: FleetSpec, console: Console) -> list[CameraRun]:
    """Clips for every camera of every edge (each camera its own scene)."""
    runs = []
    with console.status("generating camera clips"):
        for edge in range(spec.edges):
            for cam in range(spec.cameras):
                folder = out / "world" / f"edge-{edge}" / f"cam{cam}"
                clip = ClipSpec(seed=spec.seed, camera=edge * spec.cameras + cam, seconds=spec.seconds, fps=spec.fps)
                if not (folder / "clip.json").exists():
                    write_clip(clip, folder)
                runs.append(CameraRun(f"edge-{edge}", f"cam{cam}", folder))
    return runs


def start(args: list[str], log: Path, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m <args>` in its own process, behind `prefix` when given (e.g. `ip netns exec NS`), output to a log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with log.open("wb") as handle:  # the child has its own copy of the descriptor
        return subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", *args], stdout=handle, stderr=subprocess.STDOUT, env=env
        )


def wait_http(url: str, deadline: float, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until `url` answers 200; fails with the log's tail when the process dies or time runs out."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{tail(log)}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in time:\n{tail(log)}")


def wait_port(port: int, deadline: float, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until 127.0.0.1:`port` accepts connections; fails with the log's tail when the process dies or time runs out."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} in time:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    """The last lines of a log, for error messages."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int | None:
    """SIGTERM, wait, then SIGKILL if it did not drain in time; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def run_fleet(out: Path, spec: FleetSpec, console: Console) -> dict[str, Any]:
    """Generate, run, change the policy midway, score; returns the summary (also written to out)."""
    out = out.resolve()
    cameras = generate_world(out, spec, console)
    subprocess.run(
        [sys.executable, "-m", "cloud", "keygen", "--out", str(out / "keys")], check=True, capture_output=True
    )
    grpc_port, admin_port = free_port(), free_port()
    (out / "config").mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    processes: list[subprocess.Popen[bytes]] = []
    # The last edge speaks MQTT through a local mosquitto, so both transports run side by side.
    mqtt_port = free_port() if mosquitto_binary() is not None and spec.edges > 1 else None
    if mqtt_port is None:
        console.print("mosquitto not installed: every edge uses gRPC (`make setup` installs it)")
    try:
        if mqtt_port is not None:
            processes.append(start_mosquitto(out / "broker", mqtt_port))
            console.print(f"MQTT broker (mosquitto) on 127.0.0.1:{mqtt_port}")
        cloud_config = out / "config" / "cloud.yaml"
        cloud_config.write_text(
            yaml.safe_dump(cloud_yaml(out, grpc_port, admin_port, spec, mqtt_port), sort_keys=False)
        )
        cloud = start(["cloud", "serve", "--config", str(cloud_config)], logs / "cloud.log")
        processes.append(cloud)
        admin = f"http://127.0.0.1:{admin_port}"
        wait_http(f"{admin}/healthz", time.monotonic() + 120, cloud, logs / "cloud.log")
        console.print(f"cloud up: gRPC 127.0.0.1:{grpc_port}, admin {admin}")
        edges = []
        for index in range(spec.edges):
            config = out / "config" / f"edge-{index}.yaml"
            mqtt = mqtt_port if index == spec.edges - 1 else None
            settings = edge_yaml(out, index, grpc_port, free_port(), spec, mqtt)
            config.write_text(yaml.safe_dump(settings, sort_keys=False))
            edges.append(start(["edge", "run", "--config", str(config)], logs / f"edge-{index}.log"))
        processes.extend(edges)
        transports = "gRPC" if mqtt_port is None else f"gRPC, edge-{spec.edges - 1} over MQTT"
        console.print(
            f"{spec.edges} edge agents started ({transports}), {spec.cameras} cameras each, "
            f"{spec.seconds:.0f} s of video"
        )
        started = time.monotonic()
        change_at = started + spec.seconds * spec.policy_change_at
        changed_version = None
        with console.status("running the fleet") as status:
            while any(e.poll() is None for e in edges):
                if changed_version is None and time.monotonic() >= change_at:
                    changed_version = change_policy(out, admin, spec)
                    console.print(f"policy changed midway: fleet policy v{changed_version} (cat watched, band widened)")
                if time.monotonic() - started > spec.seconds * 3 + 120:
                    raise TimeoutError("edges did not finish in time; see logs in " + str(logs))
                status.update(f"running the fleet: {time.monotonic() - started:.0f} s")
                time.sleep(0.5)
        for index, edge in enumerate(edges):
            if edge.returncode != 0:
                raise RuntimeError(f"edge-{index} exited with {edge.returncode}:\n{tail(logs / f'edge-{index}.log')}")
    finally:
        for process in reversed(processes):
            stop_process(process)
    summary = summarise(out, cameras, spec)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def change_policy(out: Path, admin: str, spec: FleetSpec) -> int:
    """Publish a new fleet policy through the cloud's command line, as an operator would."""
    path = out / "config" / "policy-midway.yaml"
    path.write_text(yaml.safe_dump(fleet_policy(["person", "motorcycle", "cat"], 0.2, 0.7, spec.jpeg_quality)))
    result = subprocess.run(
        [sys.executable, "-m", "cloud", "policy", "set", str(path), "--admin", admin],
        check=True,
        capture_output=True,
        text=True,
    )
    digits = "".join(ch if ch.isdigit() else " " for ch in result.stdout).split()
    return int(digits[-1]) if digits else -1


def summarise(out: Path, cameras: list[CameraRun], spec: FleetSpec) -> dict[str, Any]:
    """The demo's figures from the agents' own records and the clips' ground truth."""
    edges = sorted({c.edge_id for c in cameras})
    per_edge = {e: json.loads((out / "edges" / e / "summary.json").read_text()) for e in edges}
    events = {e: read_jsonl(out / "edges" / e / "events.jsonl") for e in edges}
    latencies = [v for s in per_edge.values() for v in s.pop("verdict_latency_ms")]
    for s in per_edge.values():
        s.pop("local_latency_ms", None)
        s.pop("round_trip_ms", None)
    frames, all_bytes = cloud_only_bytes(cameras, spec.jpeg_quality)
    score = score_events(cameras, events)
    uplink = int(sum(s["uplink_bytes"] for s in per_edge.values()))
    return {
        "frames": frames,
        "frames_read": int(sum(s["frames_read"] for s in per_edge.values())),
        "frames_gated": int(sum(s["frames_gated"] for s in per_edge.values())),
        "samples_sent": int(sum(s["samples_sent"] for s in per_edge.values())),
        "verdicts": int(sum(s["verdicts"] for s in per_edge.values())),
        "uplink_bytes": uplink,
        "cloud_only_bytes": all_bytes,
        "uplink_ratio": uplink / all_bytes if all_bytes else None,
        "event_recall": score.watched_recall,
        "events": {"watched": score.watched, "recalled": score.watched_recalled},
        "verdict_latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)},
        "policy_versions": {e: s["policy_version"] for e, s in per_edge.items()},
        "edges": per_edge,
    }
