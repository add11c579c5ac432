"""Throughput of the glm backend (the world GLM) with dynamic batching against batch-1 serving.

Run as ``python -m bench.glm --out bench/results/glm.json`` (``make bench``). The real DynamicBatcher
sits in front of one GlmBackend in two configurations, A (max_batch_size 1) and B (max_batch_size
--batch), measured side by side in interleaved rounds on the same held-out world crops, closed-loop
(helpers from ``bench.cloud``). The figure is B / A: requests/s at the highest concurrency, and under
the p99 bound of ``bench.cloud`` (2 x p99 of A at concurrency 1).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bench.cloud import Load, machine_facts, measure_backend, summarise
from cloud.backends import GlmBackend, GlmBackendConfig
from cloud.batcher import BatcherConfig
from sim.glm.evaluate import held_out_cases

DEFAULT_MODEL = Path("sim/models/glm-world")
console = Console(stderr=True)
app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


async def _measure(
    model: Path, batch: int, queue_delay_ms: float, load: Load, rounds: int, seconds: float, max_new_tokens: int
) -> Any:
    backend = GlmBackend(GlmBackendConfig(model_path=model, max_batch_size=batch, max_new_tokens=max_new_tokens))
    samples = [case.sample for case in held_out_cases(12, seed=0, claim_seed=5)]
    configs = {
        "A": BatcherConfig(max_batch_size=1, max_queue_delay_ms=0.0, default_timeout_ms=600_000),
        "B": BatcherConfig(max_batch_size=batch, max_queue_delay_ms=queue_delay_ms, default_timeout_ms=600_000),
    }
    try:
        levels, done, spent = await measure_backend(
            backend,
            samples,
            configs,
            load,
            max_rounds=rounds,
            seconds=seconds,
            on_round=lambda n: console.print(f"round {n} done"),
        )
    finally:
        await backend.close()
    report = summarise(levels, configs, None)
    top = {name: level_list[-1].summary() for name, level_list in levels.items()}
    ratio = top["B"]["throughput_rps"] / top["A"]["throughput_rps"] if top["A"]["throughput_rps"] else None
    return {
        "samples": len(samples),
        "rounds": done,
        "seconds_spent": round(spent, 1),
        "at_concurrency": load.concurrency[-1],
        "throughput_rps": {name: summary["throughput_rps"] for name, summary in top.items()},
        "mean_batch_size_b": top["B"]["mean_batch_size"],
        "ratio_b_over_a": ratio,
        "under_p99_bound": report,
        "model_version": backend.model_version,
    }


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="JSON file to write (its folder is created).")] = Path(
        "bench/results/glm.json"
    ),
    model: Annotated[Path, typer.Option(help="The GLM-4V folder (the world GLM).")] = DEFAULT_MODEL,
    batch: Annotated[int, typer.Option(min=2, max=64, help="B's max_batch_size.")] = 8,
    queue_delay_ms: Annotated[float, typer.Option(min=0, help="B's max_queue_delay_ms.")] = 20.0,
    concurrency: Annotated[int, typer.Option(min=2, max=64, help="Clients at the high level.")] = 8,
    requests: Annotated[int, typer.Option(min=2, help="Requests per burst.")] = 32,
    burst_seconds: Annotated[float, typer.Option(min=1, help="Longest burst.")] = 30.0,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Interleaved rounds.")] = 3,
    seconds: Annotated[float, typer.Option(min=1, help="Time budget for the rounds.")] = 240.0,
    max_new_tokens: Annotated[int, typer.Option(min=8, help="The backend's max_new_tokens.")] = 64,
) -> None:
    """Measure A and B side by side and write the report."""
    load = Load((1, concurrency), requests=requests, burst_seconds=burst_seconds, request_timeout_s=600.0)
    machine = machine_facts()
    result = asyncio.run(_measure(model, batch, queue_delay_ms, load, rounds, seconds, max_new_tokens))
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = list(os.getloadavg())
    weights = (model / "model.safetensors").read_bytes()
    report = {
        "machine": machine,
        "model": {"path": str(model), "sha256": hashlib.sha256(weights).hexdigest(), "size_bytes": len(weights)},
        "settings": {
            "batch": batch,
            "queue_delay_ms": queue_delay_ms,
            "concurrency": list(load.concurrency),
            "requests_per_burst": requests,
            "burst_seconds": burst_seconds,
            "max_new_tokens": max_new_tokens,
            "load": "closed loop: each client submits, waits for the reply, submits again",
        },
        **result,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    rps = result["throughput_rps"]
    ratio = result["ratio_b_over_a"]
    console.print(
        f"glm at concurrency {concurrency}: batch-1 {rps['A']:.1f} req/s, dynamic batching {rps['B']:.1f} req/s "
        f"(mean batch {result['mean_batch_size_b'] or 0:.1f}); ratio {ratio:.2f}"
        if ratio
        else "no ratio"
    )


if __name__ == "__main__":
    app()
