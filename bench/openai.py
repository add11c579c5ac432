"""What the HTTP hop costs: the world GLM asked directly (glm backend) and through the openai backend.

Run as ``python -m bench.openai --out bench/results/openai.json``. The same held-out world crops are
judged, in interleaved rounds, (1) by a GlmBackend in this process, one `infer` per batch, and (2)
by an OpenAIBackend against ``sim.openai_server`` on loopback, backed by the same model through
``sim.openai_glm`` (concurrent requests share a generate there). Both see batches of --batch
samples, after one warm-up batch each. The figures: samples/s of each (best round), their ratio,
and how often each agrees with the ground truth (the openai path sends a JPEG at quality 90 where
the glm path hands over the raw crop).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bench.cloud import machine_facts
from cloud.backends import Backend, GlmBackend, GlmBackendConfig, OpenAIBackend, OpenAIBackendConfig
from cloud.convert import BackendResult
from sim.glm.evaluate import EvalCase, held_out_cases
from sim.openai_glm import GlmGenerator
from sim.openai_server import create_app, serving

DEFAULT_MODEL = Path("sim/models/glm-world")
console = Console(stderr=True)
app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


async def _judge_all(backend: Backend, cases: Sequence[EvalCase], batch: int) -> tuple[float, int]:
    """Seconds to judge every case in batches of `batch`, and how many decisions match the ground truth."""
    started = time.perf_counter()
    agree = 0
    for first in range(0, len(cases), batch):
        chunk = cases[first : first + batch]
        results = await backend.infer([case.sample for case in chunk])
        # A sample the backend could not judge (SampleFailure) agrees with nothing.
        agree += sum(
            isinstance(r, BackendResult) and r.decision == case.truth.decision
            for r, case in zip(results, chunk, strict=True)
        )
    return time.perf_counter() - started, agree


async def _measure(model: Path, frames: int, batch: int, rounds: int) -> dict[str, Any]:
    cases = held_out_cases(frames, seed=0, claim_seed=7)
    direct = GlmBackend(GlmBackendConfig(model_path=model, max_batch_size=batch))
    generator = await GlmGenerator.load(model, "auto", max_batch_size=batch)
    seconds: dict[str, list[float]] = {"glm": [], "openai": []}
    agree: dict[str, int] = {}
    try:
        await direct.start()
        async with serving(create_app(generator, "glm-world")) as url:
            config = OpenAIBackendConfig(
                base_url=url, model="glm-world", max_concurrency=batch, max_batch_size=batch, timeout_s=600
            )
            over_http = OpenAIBackend(config)
            await over_http.start()
            try:
                for backend in (direct, over_http):  # warm-up, not counted: first generate, first connections
                    await backend.infer([case.sample for case in cases[:batch]])
                for done in range(1, rounds + 1):
                    for name, backend in (("glm", direct), ("openai", over_http)):
                        spent, agree[name] = await _judge_all(backend, cases, batch)
                        seconds[name].append(spent)
                    console.print(f"round {done}: glm {seconds['glm'][-1]:.1f} s, openai {seconds['openai'][-1]:.1f} s")
            finally:
                await over_http.close()
    finally:
        await direct.close()
        await generator.close()
    best = {name: min(values) for name, values in seconds.items()}
    return {
        "samples": len(cases),
        "rounds": rounds,
        "seconds": seconds,
        "samples_per_s_best_round": {name: round(len(cases) / value, 2) for name, value in best.items()},
        "openai_over_glm_throughput": round(best["glm"] / best["openai"], 3),
        "agreement_with_ground_truth": {name: round(value / len(cases), 3) for name, value in agree.items()},
        "server_batch_sizes": dict(sorted(generator.batch_sizes.items())),
        "model_version": direct.model_version if direct.model_version != "unknown" else generator.model_version,
    }


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="JSON file to write (its folder is created).")] = Path(
        "bench/results/openai.json"
    ),
    model: Annotated[Path, typer.Option(help="The GLM-4V folder (the world GLM).")] = DEFAULT_MODEL,
    frames: Annotated[int, typer.Option(min=1, max=200, help="Held-out world frames whose crops are judged.")] = 24,
    batch: Annotated[int, typer.Option(min=1, max=64, help="Samples per infer call (and requests in flight).")] = 8,
    rounds: Annotated[int, typer.Option(min=1, max=10, help="Interleaved rounds; the best of each counts.")] = 3,
) -> None:
    """Measure both paths side by side and write the report."""
    machine = machine_facts()
    result = asyncio.run(_measure(model, frames, batch, rounds))
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = list(os.getloadavg())
    weights = (model / "model.safetensors").read_bytes()
    report = {
        "machine": machine,
        "model": {"path": str(model), "sha256": hashlib.sha256(weights).hexdigest(), "size_bytes": len(weights)},
        "settings": {"frames": frames, "batch": batch, "rounds": rounds},
        **result,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    rate = result["samples_per_s_best_round"]
    console.print(
        f"{result['samples']} samples: glm {rate['glm']} /s, openai over HTTP {rate['openai']} /s "
        f"(ratio {result['openai_over_glm_throughput']}); agreement {result['agreement_with_ground_truth']}"
    )


if __name__ == "__main__":
    app()
