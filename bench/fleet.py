"""Cloud ingest capacity with a thousand lightweight edges (`fleet-1000`), paced and saturating.

Two runs against a real cloud process with the oracle backend, both through `run_fleet_1000`:
`paced` offers what the fleet-1000 scenario offers (1000 edges x 0.5 samples/s = 500/s) and shows
the latency of a cloud that keeps up; `saturating` offers four times that, so the verdict rate
over the steady window is what the cloud can take in on this machine. The fleet simulator runs on
the same cores as the cloud: its own CPU time is recorded next to the cloud's. Each light edge
runs the agent's dispatcher and gRPC uplink, so resends, deferrals and sessions are the product's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bench.cloud import machine_facts
from sim.fleet.light_cloud import run_fleet_1000
from sim.fleet.light_config import Fleet1000Config, LightFleetConfig

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
    """The two runs: the scenario's pace, and four times it."""
    return {
        "paced": Fleet1000Config(fleet=LightFleetConfig(edges=edges, samples_per_edge=10, rate_per_edge_hz=0.5)),
        "saturating": Fleet1000Config(fleet=LightFleetConfig(edges=edges, samples_per_edge=30, rate_per_edge_hz=2.0)),
    }


def main(
    out: Annotated[Path, typer.Option(help="JSON file to write.")] = Path("bench/results/fleet-1000.json"),
    edges: Annotated[int, typer.Option(min=1, max=20_000, help="Simulated edges.")] = 1000,
) -> None:
    """Run both, write the JSON report."""
    report: dict[str, Any] = {"machine": machine_facts(), "runs": {}}
    for name, config in runs(edges).items():
        with tempfile.TemporaryDirectory(prefix=f"fleet-{name}-") as work:
            summary = run_fleet_1000(config, Path(work), console)
        # The uplink's target is the cloud each run starts, not a setting.
        settings = config.model_dump(mode="json", exclude={"fleet": {"uplink": {"target"}}})
        report["runs"][name] = {"settings": settings, **{k: summary[k] for k in KEPT}}
        rate, p50 = summary["ingest_rate_verdicts_per_s"], summary["verdict_latency_ms"]["p50"]
        console.print(f"{name}: {rate:.0f} verdicts/s steady, p50 {p50:.0f} ms, lost {summary['samples_lost']}")
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
