"""What the HTTP hop costs: the world GLM asked directly (glm backend) and through the openai backend.

Run as ``python -m bench.openai --out bench/results/openai.json``. The same held-out world crops are
judged, in interleaved rounds, (1) by a GlmBackend in this process, one `infer` per batch, and (2)
by an OpenAIBackend against ``sim.openai_server`` on loopback, backed by the same model through
``sim.openai_glm`` (concurrent requests share a generate there). Both see batches of --batch
samples, after one warm-up batch each. The figures: samples/s of each (best round), their ratio,
and how often each agrees with the ground truth (the openai path sends a JPEG at quality 90 where
the glm path hands over the raw crop).

A third path, (3) `transformers serve` (transformers' own OpenAI-compatible server, which nobody
here wrote) serving the same folder, runs when its command is there: it builds a Glm4vProcessor,
which needs torchvision, so it runs from the training environment (`.venv-train/bin/transformers`,
`make .venv-train/.ready`), never from .venv. It renders the world GLM's own chat template and
resizes images with the processor's own rules (aspect kept within the checkpoint's pixel bounds),
not the 112-pixel square the world GLM was trained on: what a real operator's server would do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import tempfile
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
TRANSFORMERS = Path(".venv-train/bin/transformers")
SERVE_START_S = 180.0
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_transformers_serve(command: Path, model: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`transformers serve` on a free loopback port with `model` preloaded, offline; its /v1 URL once healthy."""
    import httpx

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    argv = [str(command), "serve", str(model.resolve()), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + SERVE_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)  # polling its health endpoint: the server says when it is up, no other signal
    process.kill()
    raise RuntimeError(f"transformers serve did not answer /health within {SERVE_START_S:.0f} s; see {log}")


async def _measure(
    model: Path, frames: int, batch: int, rounds: int, transformers: Path | None, log: Path
) -> dict[str, Any]:
    cases = held_out_cases(frames, seed=0, claim_seed=7)
    direct = GlmBackend(GlmBackendConfig(model_path=model, max_batch_size=batch))
    # The same in-process backend resizing as transformers serve does (the processor's, aspect kept), so
    # that path's agreement has an in-process figure made the same way beside it.
    resized = GlmBackend(GlmBackendConfig(model_path=model, max_batch_size=batch, resize="processor"))
    generator = await GlmGenerator.load(model, "auto", max_batch_size=batch)
    served: subprocess.Popen[bytes] | None = None
    paths: list[tuple[str, Backend]] = [("glm", direct), ("glm_processor_resize", resized)]
    seconds: dict[str, list[float]] = {}
    agree: dict[str, int] = {}
    try:
        await direct.start()
        async with serving(create_app(generator, "glm-world")) as url:
            config = OpenAIBackendConfig(
                base_url=url, model="glm-world", max_concurrency=batch, max_batch_size=batch, timeout_s=600
            )
            paths.append(("openai", OpenAIBackend(config)))
            if transformers is not None:
                console.print(f"starting {transformers} serve {model} (log {log})")
                served, serve_url = await asyncio.to_thread(start_transformers_serve, transformers, model, log)
                serve_config = config.model_copy(update={"base_url": serve_url, "model": str(model)})
                paths.append(("transformers_serve", OpenAIBackend(serve_config)))
            try:
                for name, backend in paths:  # warm-up, not counted: first generate, first connections
                    if name != "glm":
                        await backend.start()
                    await backend.infer([case.sample for case in cases[:batch]])
                    seconds[name] = []
                for done in range(1, rounds + 1):
                    for name, backend in paths:
                        spent, agree[name] = await _judge_all(backend, cases, batch)
                        seconds[name].append(spent)
                    console.print(f"round {done}: " + ", ".join(f"{n} {v[-1]:.1f} s" for n, v in seconds.items()))
            finally:
                for _, backend in paths[2:]:
                    await backend.close()
    finally:
        await direct.close()
        await resized.close()
        await generator.close()
        if served is not None:
            served.terminate()
            await asyncio.to_thread(served.wait, 30)
    best = {name: min(values) for name, values in seconds.items()}
    return {
        "samples": len(cases),
        "rounds": rounds,
        "seconds": seconds,
        "samples_per_s_best_round": {name: round(len(cases) / value, 2) for name, value in best.items()},
        "openai_over_glm_throughput": round(best["glm"] / best["openai"], 3),
        "transformers_serve_over_glm_throughput": round(best["glm"] / best["transformers_serve"], 3)
        if "transformers_serve" in best
        else None,
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
    transformers: Annotated[
        Path, typer.Option(help="The training environment's `transformers` command; missing: that path is skipped.")
    ] = TRANSFORMERS,
) -> None:
    """Measure the paths side by side and write the report."""
    machine = machine_facts()
    command: Path | None = transformers if transformers.is_file() else None
    if command is None:
        console.print(f"{transformers} is not there (make .venv-train/.ready): transformers serve is not measured")
    log = Path(tempfile.gettempdir()) / "edgeglm-bench-transformers-serve.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(_measure(model.resolve(), frames, batch, rounds, command, log))
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = list(os.getloadavg())
    weights = (model / "model.safetensors").read_bytes()
    report = {
        "machine": machine,
        "model": {"path": str(model), "sha256": hashlib.sha256(weights).hexdigest(), "size_bytes": len(weights)},
        "settings": {"frames": frames, "batch": batch, "rounds": rounds},
        "transformers_serve": {
            "command": str(command) if command else None,
            "why_that_environment": "Glm4vProcessor needs torchvision, which only the training environment has",
        },
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
