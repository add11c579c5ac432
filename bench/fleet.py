"""Cloud ingest capacity with a thousand lightweight edges (`fleet-1000`), paced and saturating.

Runs against a real cloud process with the oracle backend, through `run_fleet_1000`: `paced` offers
what the fleet-1000 scenario offers (1000 edges x 0.5 samples/s = 500/s) and shows the latency of a
cloud that keeps up; `saturating` offers four times that, so the verdict rate over the steady
window is what the cloud can take in on this machine; `saturating_postgres` is the same with the
store on a throwaway PostgreSQL cluster (when it is installed). `saturating_bare` runs the same
fleet against `bench.bare_ack`, a grpc.aio server that only acks and answers: the stack's own
limit here. The report's `ratios` put them side by side (cloud / bare, postgres / sqlite). The fleet
simulator runs on the same cores as the cloud: its own CPU time is recorded next to the cloud's.
Each light edge runs the agent's dispatcher and gRPC uplink, so resends, deferrals and sessions are
the product's.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bench.cloud import machine_facts
from bench.postgres import MISSING, postgres_bin, postgres_server
from sim.fleet.light import run_light_fleet
from sim.fleet.light_cloud import process_cpu_s, run_fleet_1000
from sim.fleet.light_config import Fleet1000Config, LightFleetConfig
from sim.fleet.light_samples import ensure_clips
from sim.fleet.run import free_port, start, stop_process, wait_port

console = Console(stderr=True)
KEPT = (
    "edges",
    "samples_sent",
    "sends",
    "samples_unsent",
    "verdicts_received",
    "samples_lost",
    "samples_duplicated",
    "verdicts_wrong",
    "samples_resent",
    "samples_deferred",
    "sessions_opened",
    "ingest_rate_verdicts_per_s",
    "ingest_rate_overall_per_s",
    "cloud",
    "verdict_latency_ms",
    "bytes_sent",
    "elapsed_s",
    "client_cpu_s",
    "cloud_cpu_s",
    "deadline_reached",
)


def runs(edges: int) -> dict[str, Fleet1000Config]:
    """The two runs against the cloud on SQLite: the scenario's pace, and four times it."""
    return {
        "paced": Fleet1000Config(fleet=LightFleetConfig(edges=edges, samples_per_edge=10, rate_per_edge_hz=0.5)),
        "saturating": Fleet1000Config(fleet=LightFleetConfig(edges=edges, samples_per_edge=30, rate_per_edge_hz=2.0)),
    }


def run_bare(config: Fleet1000Config, work: Path) -> dict[str, Any]:
    """The light fleet against `bench.bare_ack` (acks and answers, nothing else)."""
    port = free_port()
    log = work / "logs" / "bare.log"
    server = start(["bench.bare_ack", "--port", str(port)], log)
    try:
        wait_port(port, time.monotonic() + 30, server, log)
        clips = ensure_clips(config.fleet, work)
        result = asyncio.run(run_light_fleet(config.fleet, f"127.0.0.1:{port}", work, progress=True, clips=clips))
        cpu_s = process_cpu_s(server.pid)
    finally:
        stop_process(server, timeout=10)
    summary = result.to_dict()
    summary["cloud_cpu_s"] = cpu_s
    return summary


def main(
    out: Annotated[Path, typer.Option(help="JSON file to write.")] = Path("bench/results/fleet-1000.json"),
    edges: Annotated[int, typer.Option(min=1, max=20_000, help="Simulated edges.")] = 1000,
) -> None:
    """Run both, write the JSON report."""
    report: dict[str, Any] = {"machine": machine_facts(), "runs": {}}

    def record(name: str, config: Fleet1000Config, summary: dict[str, Any]) -> None:
        # The uplink's target is the cloud each run starts, and the DSN file a temporary one: not settings.
        settings = config.model_dump(
            mode="json", exclude={"fleet": {"uplink": {"target"}}, "cloud": {"store_dsn_file"}}
        )
        report["runs"][name] = {"settings": settings, **{k: summary.get(k) for k in KEPT}}
        rate, p50 = summary["ingest_rate_verdicts_per_s"], summary["verdict_latency_ms"]["p50"]
        console.print(f"{name}: {rate:.0f} verdicts/s steady, p50 {p50:.0f} ms, lost {summary['samples_lost']}")

    planned = runs(edges)
    for name, config in planned.items():
        with tempfile.TemporaryDirectory(prefix=f"fleet-{name}-") as work:
            record(name, config, run_fleet_1000(config, Path(work), console))
    saturating = planned["saturating"]
    if postgres_bin() is not None:
        settings = {"fsync": "on", "synchronous_commit": "off"}  # SQLite's promise (WAL, NORMAL)
        with postgres_server(settings) as server, tempfile.TemporaryDirectory(prefix="fleet-postgres-") as work:
            dsn_file = Path(work) / "pg-dsn"
            dsn_file.write_text(server.new_dsn())
            config = saturating.model_copy(
                update={"cloud": saturating.cloud.model_copy(update={"store_dsn_file": dsn_file})}
            )
            record("saturating_postgres", config, run_fleet_1000(config, Path(work), console))
    else:
        report["runs"]["saturating_postgres"] = {"skipped": MISSING}
    with tempfile.TemporaryDirectory(prefix="fleet-bare-") as work:
        record("saturating_bare", saturating, run_bare(saturating, Path(work)))
    rates = {name: run.get("ingest_rate_verdicts_per_s") for name, run in report["runs"].items()}
    report["ratios"] = {
        "cloud_sqlite_over_bare_grpc": rates["saturating"] / rates["saturating_bare"],
        **(
            {"postgres_over_sqlite": rates["saturating_postgres"] / rates["saturating"]}
            if rates.get("saturating_postgres")
            else {}
        ),
    }
    console.print(f"ratios: {report['ratios']}")
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
