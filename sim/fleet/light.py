"""A lightweight fleet: many simulated edges in one asyncio process, each the agent's own dispatcher
and gRPC uplink (`sim.fleet.light_edge`) with its own Session stream, a few channels shared among them.

`run_light_fleet` loads a cloud the way a large fleet would, with real samples (JPEG crops of clip
frames, ground-truth detections with noise) at a steady per-edge rate, and measures what the cloud
takes in: verdicts per second over the steady window and from the cloud's own counters, verdict
latency, and whether every sample got exactly one verdict, the right one. `run_fleet_1000`
(sim.fleet.light_cloud) runs it against a real cloud process. Command line:
`python -m sim.fleet.light --help`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc.aio
import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from tqdm import tqdm

from common.config import ConfigError, format_errors, read_yaml_mapping
from edge.config import GrpcUplinkConfig
from edge.uplink.grpc import channel_options
from sim.fleet.light_config import LightFleetConfig
from sim.fleet.light_edge import FleetTally, LightEdge
from sim.fleet.light_samples import PreparedCrop, camera_clips, edge_id_of, ensure_clips, prepare_clip
from sim.fleet.summary import percentile

logger = logging.getLogger(__name__)
RESULT_FILE = "light-fleet.json"
# Share of verdicts cut from each end of the run to leave the steady window (ramp up, drain).
STEADY_TRIM = 0.1
# After the global deadline, how long the edges get to close their streams before they are cancelled.
CLOSE_GRACE_S = 10.0
CLOUD_COUNTERS = {
    "samples_received": "edgeglm_cloud_samples_received_total",
    "samples_duplicate": "edgeglm_cloud_samples_duplicate_total",
    "verdicts_sent": "edgeglm_cloud_verdicts_sent_total",
    "batches": "edgeglm_inference_exec_count_total",
}


@dataclass(frozen=True)
class LightFleetResult:
    """What a lightweight fleet run measured (written to light-fleet.json)."""

    edges: int
    samples_planned: int
    samples_sent: int
    sends: int
    samples_unsent: int
    verdicts_received: int
    samples_lost: int
    samples_duplicated: int
    samples_refused: int
    samples_resent: dict[str, int]
    samples_deferred: dict[str, int]
    acks: dict[str, int]
    policies_received: int
    verdicts_correct: int
    verdicts_wrong: int
    ingest_rate_verdicts_per_s: float | None
    ingest_rate_overall_per_s: float | None
    cloud: dict[str, float | None]
    verdict_latency_ms: dict[str, float | None]
    bytes_sent: int
    sessions_opened: int
    errors: dict[str, int]
    decisions: dict[str, int]
    origins: dict[str, int]
    elapsed_s: float
    client_cpu_s: float
    deadline_reached: bool
    wrong_examples: list[str]
    lost_examples: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-able data."""
        return asdict(self)


def fleet_channel_options(uplink: GrpcUplinkConfig) -> list[tuple[str, object]]:
    """The agent's channel options (keepalive, message sizes, reconnect backoff), each channel its own connection.

    A private subchannel pool: without it gRPC gives every channel of a process to the same target
    and options one shared connection, and the fleet would be one HTTP/2 connection however it is split.
    """
    return [*channel_options(uplink), ("grpc.use_local_subchannel_pool", 1)]


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


async def read_cloud_counters(metrics_url: str | None) -> dict[str, float] | None:
    """The cloud's ingest counters from its Prometheus /metrics, summed over labels; None when unreadable."""
    if metrics_url is None:
        return None
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(metrics_url)
            response.raise_for_status()
    except httpx.HTTPError as err:
        logger.warning("cloud metrics at %s not readable: %s", metrics_url, err)
        return None
    totals = dict.fromkeys(CLOUD_COUNTERS, 0.0)
    names = {metric: key for key, metric in CLOUD_COUNTERS.items()}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in names:
                totals[names[sample.name]] += sample.value
    return totals


async def prepare_crops(config: LightFleetConfig, clips: list[Path]) -> dict[Path, list[PreparedCrop]]:
    """Every clip's crops, cut and encoded once in a worker thread."""
    rng = random.Random(config.seed)
    crops: dict[Path, list[PreparedCrop]] = {}
    for clip in dict.fromkeys(clips):
        crops[clip] = await asyncio.to_thread(prepare_clip, clip, config, random.Random(rng.random()))
    return crops


async def run_light_fleet(
    config: LightFleetConfig,
    grpc_target: str,
    out_dir: Path,
    progress: bool = True,
    metrics_url: str | None = None,
    clips: list[Path] | None = None,
) -> LightFleetResult:
    """Run the fleet against `grpc_target` until every verdict is in or the deadline; writes light-fleet.json.

    `metrics_url` is the cloud's Prometheus endpoint, read before and after; `clips` overrides the
    configured or generated clip folders (each camera shows clips[(edge * cameras + camera) % len]).
    """
    started = time.monotonic()
    cpu_before = time.process_time()
    deadline = started + config.deadline_s
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    folders = clips if clips else await asyncio.to_thread(ensure_clips, config, out_dir)
    crops = await prepare_crops(config, folders)
    shows = camera_clips(config, folders)
    tally = FleetTally()
    uplink = config.uplink_to(grpc_target)
    before = await read_cloud_counters(metrics_url)
    channels = [
        grpc.aio.insecure_channel(grpc_target, options=fleet_channel_options(uplink))
        for _ in range(0, config.edges, config.edges_per_channel)
    ]
    first_send = time.monotonic()
    try:
        edges = [
            LightEdge(
                edge_id_of(i),
                [crops[shows[f"{edge_id_of(i)}/cam{c}"]] for c in range(config.cameras_per_edge)],
                config,
                tally,
                uplink,
                channels[i // config.edges_per_channel],
            )
            for i in range(config.edges)
        ]
        spread = config.start_ramp_s / config.edges
        tasks = [
            asyncio.create_task(edge.run(first_send + i * spread, deadline), name=f"light-edge-{i}")
            for i, edge in enumerate(edges)
        ]
        await _watch(tasks, tally, config, deadline, progress)
    finally:
        for channel in channels:
            await channel.close(grace=None)
    elapsed = time.monotonic() - started
    after = await read_cloud_counters(metrics_url)
    for edge in edges:
        edge.account_end()
    result = _result(config, tally, before, after, first_send, elapsed, time.monotonic() >= deadline)
    result = dataclasses.replace(result, client_cpu_s=time.process_time() - cpu_before)
    await asyncio.to_thread((out_dir / RESULT_FILE).write_text, json.dumps(result.to_dict(), indent=1) + "\n")
    return result


async def _watch(
    tasks: list[asyncio.Task[None]], tally: FleetTally, config: LightFleetConfig, deadline: float, progress: bool
) -> None:
    """Wait for every edge (at most until the deadline plus a grace), with a progress bar."""
    total = config.edges * config.samples_each
    with tqdm(total=total, desc="fleet verdicts", unit="verdict", disable=not progress, smoothing=0.1) as bar:
        pending = set(tasks)
        while pending and time.monotonic() < deadline + CLOSE_GRACE_S:
            _, pending = await asyncio.wait(pending, timeout=0.5)
            bar.update(tally.verdicts - bar.n)
            bar.set_postfix(queued=tally.queued, sends=tally.sends, errors=sum(tally.errors.values()), refresh=False)
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _result(
    config: LightFleetConfig,
    tally: FleetTally,
    before: dict[str, float] | None,
    after: dict[str, float] | None,
    first_send: float,
    elapsed: float,
    deadline_reached: bool,
) -> LightFleetResult:
    times = sorted(tally.verdict_times)
    steady = None
    overall = None
    if len(times) >= 10:
        low, high = int(len(times) * STEADY_TRIM), int(len(times) * (1 - STEADY_TRIM)) - 1
        if times[high] > times[low]:
            steady = (high - low) / (times[high] - times[low])
    if times and times[-1] > first_send:
        overall = len(times) / (times[-1] - first_send)
    cloud: dict[str, float | None] = dict.fromkeys(CLOUD_COUNTERS)
    if before is not None and after is not None:
        cloud = {key: after[key] - before[key] for key in CLOUD_COUNTERS}
        window = (times[-1] - first_send) if times else 0.0
        received = cloud["samples_received"]
        cloud["ingest_rate_per_s"] = received / window if window > 0 and received is not None else None
    latencies = tally.latencies_ms
    return LightFleetResult(
        edges=config.edges,
        samples_planned=config.edges * config.samples_each,
        samples_sent=tally.unique_sent,
        sends=tally.sends,
        samples_unsent=tally.unsent,
        verdicts_received=tally.verdicts,
        samples_lost=tally.lost,
        samples_duplicated=tally.duplicates,
        samples_refused=tally.refused,
        samples_resent=tally.by_label("edgeglm_edge_samples_resent"),
        samples_deferred=tally.by_label("edgeglm_edge_samples_deferred"),
        acks=tally.by_label("edgeglm_edge_acks"),
        policies_received=tally.policies,
        verdicts_correct=tally.correct,
        verdicts_wrong=tally.wrong,
        ingest_rate_verdicts_per_s=steady,
        ingest_rate_overall_per_s=overall,
        cloud=cloud,
        verdict_latency_ms={q: percentile(latencies, n) for q, n in (("p50", 50), ("p95", 95), ("p99", 99))},
        bytes_sent=tally.bytes_sent,
        sessions_opened=tally.sessions_opened,
        errors=dict(tally.errors),
        decisions=dict(tally.decisions),
        origins=dict(tally.origins),
        elapsed_s=elapsed,
        client_cpu_s=0.0,
        deadline_reached=deadline_reached,
        wrong_examples=tally.wrong_examples,
        lost_examples=tally.lost_examples,
    )


def main(
    out: Annotated[Path, typer.Option(help="Folder for clips, the cloud's config and log, and light-fleet.json.")],
    config: Annotated[
        Path | None, typer.Option(help="YAML of a Fleet1000Config ({fleet: ..., cloud: ...}); flags override it.")
    ] = None,
    edges: Annotated[int | None, typer.Option(help="Simulated edges (default 1000).")] = None,
    samples_per_edge: Annotated[int | None, typer.Option(help="Samples each edge sends (default 10).")] = None,
    rate: Annotated[float | None, typer.Option(help="Samples per second per edge (default 0.5).")] = None,
    edges_per_channel: Annotated[
        int | None, typer.Option(help="Edges sharing one gRPC channel, a Session each (default 50).")
    ] = None,
) -> None:
    """Run `fleet-1000`: a real cloud process (oracle backend) against a fleet of lightweight simulated edges."""
    from rich.console import Console

    from sim.fleet.light_cloud import run_fleet_1000
    from sim.fleet.light_config import Fleet1000Config

    try:
        raw = read_yaml_mapping(config) if config is not None else {}
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from err
    fleet = dict(raw.get("fleet") or {})
    flags = {"edges": edges, "samples_per_edge": samples_per_edge, "rate_per_edge_hz": rate}
    flags["edges_per_channel"] = edges_per_channel
    fleet.update({key: value for key, value in flags.items() if value is not None})
    try:
        settings = Fleet1000Config.model_validate({**raw, "fleet": fleet})
    except ValidationError as err:
        source = config.name if config is not None else "the flags"
        typer.echo(format_errors(source, err, Fleet1000Config), err=True)
        raise typer.Exit(2) from err
    console = Console(stderr=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    summary = run_fleet_1000(settings, out, console)
    shown = {k: v for k, v in summary.items() if k not in ("wrong_examples", "lost_examples")}
    typer.echo(json.dumps(shown, indent=1))
    if summary["samples_lost"] or summary["samples_unsent"] or summary["verdicts_wrong"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
