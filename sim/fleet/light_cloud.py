"""`fleet-1000`: a lightweight fleet against one real cloud process with the oracle backend.

The cloud is started as its operator would start it (`python -m cloud serve --config cloud.yaml`),
with ground truth for every edge's cameras, a batcher sized for throughput and the admin API on,
so the run reads the cloud's own ingest counters from /metrics.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from sim.fleet.light import raise_open_file_limit, run_light_fleet
from sim.fleet.light_config import Fleet1000Config
from sim.fleet.light_samples import camera_clips, ensure_clips
from sim.fleet.run import free_port, start, stop_process, wait_http

# The cloud's shutdown grace: enough to deliver what is owed to a thousand sessions.
CLOUD_GRACE_S = 30.0


def light_cloud_yaml(
    config: Fleet1000Config, out: Path, clips: list[Path], grpc_port: int, admin_port: int
) -> dict[str, Any]:
    """The cloud's config: the oracle knows every edge's cameras; batching sized for a large fleet."""
    cloud = config.cloud
    truth = {key: str(path) for key, path in camera_clips(config.fleet, clips).items()}
    return {
        "server": {
            "host": "127.0.0.1",
            "port": grpc_port,
            "max_concurrent_streams": max(1_000, config.fleet.edges_per_channel * 2),
            "shutdown_grace_s": CLOUD_GRACE_S,
        },
        "backend": {
            "kind": "oracle",
            "ground_truth": truth,
            "delay_ms": cloud.oracle_delay_ms,
            "jitter_ms": cloud.oracle_jitter_ms,
            "seed": config.fleet.seed,
            "max_batch_size": cloud.max_batch_size,
        },
        "batcher": {
            "max_batch_size": cloud.max_batch_size,
            "max_queue_delay_ms": cloud.max_queue_delay_ms,
            "max_queue_size": cloud.max_queue_size,
            "default_timeout_ms": cloud.inference_timeout_ms,
        },
        "store": {"path": str(out / "cloud" / "verdicts.sqlite")}
        | ({} if cloud.store_dsn_file is None else {"kind": "postgres", "dsn_file": str(cloud.store_dsn_file)}),
        "policy": {"signing_key": str(out / "keys" / "policy-signing.key"), "create_signing_key": True},
        "known_edges": [],
        "admin": {"enabled": True, "host": "127.0.0.1", "port": admin_port},
        "mqtt": {"enabled": False},
    }


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a running process has used, from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields after the command name start at field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_fleet_1000(config: Fleet1000Config, out_dir: Path, console: Console) -> dict[str, Any]:
    """Start the cloud process, run the lightweight fleet against it, stop it; returns the result dict.

    Writes out_dir/config/cloud.yaml, out_dir/logs/cloud.log and out_dir/light-fleet.json.
    """
    out = out_dir.resolve()
    limit = raise_open_file_limit()
    with console.status("preparing camera clips"):
        clips = ensure_clips(config.fleet, out)
    grpc_port, admin_port = free_port(), free_port()
    cloud_config = out / "config" / "cloud.yaml"
    cloud_config.parent.mkdir(parents=True, exist_ok=True)
    cloud_config.write_text(
        yaml.safe_dump(light_cloud_yaml(config, out, clips, grpc_port, admin_port), sort_keys=False)
    )
    log = out / "logs" / "cloud.log"
    cloud = start(["cloud", "serve", "--config", str(cloud_config)], log)
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        wait_http(f"{admin}/healthz", time.monotonic() + config.cloud.start_timeout_s, cloud, log)
        fleet = config.fleet
        console.print(
            f"cloud up (oracle, gRPC 127.0.0.1:{grpc_port}); {fleet.edges} light edges x {fleet.cameras_per_edge} "
            f"cameras, {fleet.samples_each} samples each at {fleet.rate_per_edge_hz:g}/s, "
            f"{fleet.edges_per_channel} streams per connection (open-file limit {limit})"
        )
        target, metrics = f"127.0.0.1:{grpc_port}", f"{admin}/metrics"
        result = asyncio.run(run_light_fleet(fleet, target, out, progress=True, metrics_url=metrics, clips=clips))
        if cloud.poll() is not None:
            raise RuntimeError(f"the cloud exited with {cloud.returncode} during the run; see {log}")
        cloud_cpu_s = process_cpu_s(cloud.pid)
    finally:
        stop_process(cloud, timeout=CLOUD_GRACE_S + 10)
    summary = result.to_dict()
    summary["cloud_cpu_s"] = cloud_cpu_s
    summary["cloud_config"] = str(cloud_config)
    summary["cloud_log"] = str(log)
    return summary
