"""Cloud throughput with dynamic batching against batch-1 serving, under one p99 latency bound.

Run as ``python -m bench.cloud --out bench/results/cloud.json`` (``make bench``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
import onnxruntime as ort
import typer
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cloud.backends import Backend, OnnxBackend, OnnxBackendConfig, OracleBackend, OracleBackendConfig
from cloud.batcher import BatcherConfig, BatcherError, DynamicBatcher
from cloud.convert import SampleInput, sample_from_pb
from cloud.metrics import CloudMetrics
from protos import sample_pb2
from sim.world.dataset import DatasetSpec, render_dataset_image

DEFAULT_MODEL = Path("sim/models/reference.onnx")
GOAL_RATIO = 3.0
CONCURRENCY = (1, 2, 4, 8, 16)
BOUND_FACTOR = 2.0
LABELS = {
    "onnx": "real: the onnx backend (ONNX Runtime on this CPU); a batch of n costs about n samples here",
    "oracle": "modelled: the oracle backend, a fixed delay per batch whatever its size (a GPU well below "
    "saturation); shows the batcher's own gain",
}

HELP = f"""Requests/s the cloud sustains under a p99 latency bound, with and without dynamic batching.

The real DynamicBatcher sits in front of each backend, in two configurations that share one backend:

\b
  A  max_batch_size 1 (every request is inferred alone);
  B  max_batch_size --batch, max_queue_delay_ms --queue-delay-ms.

\b
Backends, each measured on its own:
  onnx    real: ONNX Runtime on this machine (--model); on a CPU a batch of n costs
          about n samples, so batching can gain little here;
  oracle  modelled: a fixed --oracle-delay-ms per batch whatever its size, like a GPU
          well below saturation; this shows the batcher's own gain.

Load is closed-loop: N clients (--concurrency, default {", ".join(map(str, CONCURRENCY))}; 1 is always
measured) each submit a sample, wait for its
reply and submit the next, until the burst's --requests (at least 2 per client) are answered or
--burst-seconds pass. Samples are world test images (seed 0) as an edge sends them (JPEG, the true
objects as edge detections). Every round runs each concurrency on A then B (B then A the next round,
so load from other work hits both alike), until --rounds or --seconds per backend.

The bound is {BOUND_FACTOR:g} x the p99 latency of A at concurrency 1 (or --bound-ms). For A and B the
report picks the concurrency with the highest throughput whose p99 stays under the bound; ratio =
B / A (goal >= {GOAL_RATIO:g}). Per concurrency it lists requests/s (median over rounds), p50/p95/p99
latency (submit to reply, over all rounds), mean batch size, mean queue and inference ms.
"""

console = Console(stderr=True)
app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)


def world_samples(count: int) -> list[SampleInput]:
    """``count`` world test images (seed 0) as samples an edge sends: a JPEG and its true objects as detections."""
    spec = DatasetSpec(seed=0)
    samples = []
    for index in range(count):
        scene = render_dataset_image(spec, "test", index)
        image = np.asarray(scene.image, np.uint8)
        height, width = image.shape[:2]
        detections = [
            sample_pb2.Detection(
                label=o.label, score=0.4, box=sample_pb2.Box(x1=o.box[0], y1=o.box[1], x2=o.box[2], y2=o.box[3])
            )
            for o in scene.objects
        ]
        pb = sample_pb2.Sample(
            sample_id=f"bench-{index}",
            edge_id="bench",
            camera_id="cam0",
            frame_seq=index,
            captured_at=Timestamp(seconds=1_767_225_600),
            image=sample_pb2.SampleImage(
                jpeg=cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(),
                frame_width=width,
                frame_height=height,
            ),
            detections=detections,
            mined_reason=sample_pb2.MINED_REASON_UNCERTAINTY_BAND,
            trace_id=f"trace-{index}",
        )
        samples.append(sample_from_pb(pb))
    return samples


@dataclass
class Level:
    """One configuration at one concurrency, accumulated over rounds."""

    config: str
    concurrency: int
    round_rps: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    batches: float = 0.0
    batched_requests: float = 0.0
    failures: int = 0

    def summary(self) -> dict[str, Any]:
        """The level's figures, JSON-ready."""
        latencies = np.asarray(self.latencies_ms)
        answered = len(latencies) > 0

        def percentile(q: float) -> float | None:
            return float(np.percentile(latencies, q)) if answered else None

        return {
            "concurrency": self.concurrency,
            "requests": len(self.latencies_ms) + self.failures,
            "failures": self.failures,
            "throughput_rps": float(np.median(self.round_rps)) if self.round_rps else 0.0,
            "p50_ms": percentile(50),
            "p95_ms": percentile(95),
            "p99_ms": percentile(99),
            "mean_batch_size": self.batched_requests / self.batches if self.batches else None,
            "mean_queue_ms": float(np.mean(self.queue_ms)) if answered else None,
            "mean_inference_ms": float(np.mean(self.inference_ms)) if answered else None,
        }


@dataclass(frozen=True)
class Load:
    """How hard and how long one burst pushes."""

    concurrency: tuple[int, ...]
    requests: int
    burst_seconds: float
    request_timeout_s: float


@dataclass
class Side:
    """One batcher configuration in front of the shared backend, with metrics of its own."""

    name: str
    batcher: DynamicBatcher
    metrics: CloudMetrics
    label: str

    def batch_counts(self) -> tuple[float, float]:
        """Batches run and requests they held, so far."""
        registry, labels = self.metrics.registry, {"backend": self.label}
        batches = registry.get_sample_value("edgeglm_inference_batch_size_count", labels) or 0.0
        requests = registry.get_sample_value("edgeglm_inference_batch_size_sum", labels) or 0.0
        return batches, requests


async def burst(side: Side, samples: Sequence[SampleInput], level: Level, load: Load) -> None:
    """Closed-loop load at ``level.concurrency``; records into ``level``, bounded in requests and time."""
    concurrency = level.concurrency
    per_client = max(2, -(-load.requests // concurrency))
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + load.burst_seconds
    batches_before, requests_before = side.batch_counts()
    answered = 0

    async def client(index: int) -> None:
        nonlocal answered
        for turn in range(per_client):
            if loop.time() >= stop_at:
                return
            sample = samples[(index + turn * concurrency) % len(samples)]
            started = time.perf_counter()
            try:
                _, queue_ms, inference_ms = await side.batcher.submit(sample, load.request_timeout_s)
            except BatcherError:
                level.failures += 1
                continue
            level.latencies_ms.append((time.perf_counter() - started) * 1000)
            level.queue_ms.append(queue_ms)
            level.inference_ms.append(inference_ms)
            answered += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(index) for index in range(concurrency)))
    level.round_rps.append(answered / (time.perf_counter() - started))
    batches_after, requests_after = side.batch_counts()
    level.batches += batches_after - batches_before
    level.batched_requests += requests_after - requests_before


async def measure_backend(
    backend: Backend,
    samples: Sequence[SampleInput],
    configs: dict[str, BatcherConfig],
    load: Load,
    *,
    max_rounds: int,
    seconds: float,
    on_round: Callable[[int], None] | None = None,
) -> tuple[dict[str, list[Level]], int, float]:
    """Interleaved rounds over every (concurrency, config); returns the levels, rounds done and seconds spent.

    Both batchers share ``backend`` (one session, one thread pool for both sides); they take turns,
    so the backend still sees one call at a time.
    """
    sides = []
    for name, config in configs.items():
        metrics = CloudMetrics()
        sides.append(Side(name, DynamicBatcher(backend, config, metrics), metrics, backend.name))
    for side in sides:
        await side.batcher.start()  # the first starts the shared backend; the second finds it started
    levels = {side.name: [Level(side.name, c) for c in load.concurrency] for side in sides}
    order = [(side, index) for index in range(len(load.concurrency)) for side in sides]
    try:
        warm_up = dataclasses.replace(load, requests=1)
        for side, index in order:
            await burst(side, samples, Level(side.name, load.concurrency[index]), warm_up)
        start = time.perf_counter()
        done = 0
        while done < max_rounds:
            for side, index in order if done % 2 == 0 else list(reversed(order)):
                await burst(side, samples, levels[side.name][index], load)
            done += 1
            if on_round is not None:
                on_round(done)
            if time.perf_counter() - start >= seconds:
                break
        spent = time.perf_counter() - start
    finally:
        for side in sides:
            await side.batcher.stop(timeout_s=load.request_timeout_s)
    return levels, done, spent


def best_under(levels: Sequence[dict[str, Any]], bound_ms: float) -> dict[str, Any] | None:
    """The level with the highest throughput whose p99 stays under ``bound_ms`` and that failed nothing."""
    fitting = [
        level
        for level in levels
        if level["p99_ms"] is not None and level["p99_ms"] <= bound_ms and not level["failures"]
    ]
    return max(fitting, key=lambda level: level["throughput_rps"]) if fitting else None


def summarise(
    levels: dict[str, list[Level]], configs: dict[str, BatcherConfig], bound_ms: float | None
) -> dict[str, Any]:
    """Per config: every level, the best under the bound; and the ratio B / A."""
    summaries = {name: [level.summary() for level in side] for name, side in levels.items()}
    batch_one_p99 = summaries["A"][0]["p99_ms"]
    if bound_ms is None:
        bound_ms = BOUND_FACTOR * batch_one_p99 if batch_one_p99 is not None else 0.0
        rule = f"{BOUND_FACTOR:g} x p99 of A at concurrency 1"
    else:
        rule = "fixed (--bound-ms)"
    best = {name: best_under(summary, bound_ms) for name, summary in summaries.items()}
    best_a, best_b = best["A"], best["B"]
    ratio = best_b["throughput_rps"] / best_a["throughput_rps"] if best_a and best_b else None
    peak = {name: max(level["throughput_rps"] for level in summary) for name, summary in summaries.items()}
    return {
        "bound_ms": bound_ms,
        "bound_rule": rule,
        "configs": {
            name: {
                "batcher": configs[name].model_dump(),
                "levels": summaries[name],
                "best_under_bound": best[name],
                "peak_rps_any_latency": peak[name],
            }
            for name in summaries
        },
        "ratio_b_over_a": ratio,
        # Without the bound: whether batching raises throughput at all, whatever the latency.
        "ratio_b_over_a_peak": peak["B"] / peak["A"] if peak["A"] > 0 else None,
    }


def machine_facts() -> dict[str, Any]:
    """What the figures depend on besides the code: CPU, libraries, load."""
    processor = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text(errors="replace").splitlines()
            if line.startswith("model name")
        ]
        processor = models[0] if models else processor
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine": platform.machine(),
        "processor": processor,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


async def _benchmark(
    model: Path,
    samples: Sequence[SampleInput],
    configs: dict[str, BatcherConfig],
    load: Load,
    *,
    threads: int,
    oracle_delay_ms: float,
    max_rounds: int,
    seconds: float,
    bound_ms: float | None,
    progress: Progress | None,
) -> dict[str, Any]:
    batch = configs["B"].max_batch_size
    backends: dict[str, Backend] = {
        "onnx": OnnxBackend(
            OnnxBackendConfig(model_path=model, providers=["cpu"], intra_op_threads=threads, max_batch_size=batch)
        ),
        # No ground truth: every answer is "unsure", which costs about what any other verdict costs.
        "oracle": OracleBackend(OracleBackendConfig(delay_ms=oracle_delay_ms, jitter_ms=0.0, max_batch_size=batch)),
    }
    report: dict[str, Any] = {}
    for name, backend in backends.items():
        on_round = None
        if progress is not None:
            task = progress.add_task(f"{name}: interleaved rounds", total=max_rounds)

            def on_round(done: int, task: Any = task) -> None:
                progress.update(task, completed=done)

        facts: dict[str, Any] = {"label": LABELS[name]}
        levels, done, spent = await measure_backend(
            backend, samples, configs, load, max_rounds=max_rounds, seconds=seconds, on_round=on_round
        )
        if isinstance(backend, OnnxBackend):
            facts["intra_op_threads"] = threads or "ORT default"
        else:
            facts["delay_ms_per_batch"] = oracle_delay_ms
            facts["verdicts"] = "no ground truth given: every answer is unsure; only the delay is measured"
        report[name] = {**facts, "rounds": done, "seconds_spent": spent, **summarise(levels, configs, bound_ms)}
    return report


def benchmark(
    model: Path,
    *,
    samples: int = 16,
    concurrency: Sequence[int] = CONCURRENCY,
    batch: int = 8,
    queue_delay_ms: float = 10.0,
    requests: int = 32,
    burst_seconds: float = 3.0,
    request_timeout_s: float = 30.0,
    threads: int = 0,
    oracle_delay_ms: float = 25.0,
    max_rounds: int = 8,
    seconds: float = 60.0,
    bound_ms: float | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure A (batch 1) and B (dynamic batching) on both backends; returns the report as a JSON-ready dict."""
    configs = {
        "A": BatcherConfig(max_batch_size=1, max_queue_delay_ms=0.0),
        "B": BatcherConfig(max_batch_size=batch, max_queue_delay_ms=queue_delay_ms),
    }
    # Concurrency 1 always: the bound is taken from A there.
    levels = tuple(sorted({1, *concurrency}))
    load = Load(levels, requests=requests, burst_seconds=burst_seconds, request_timeout_s=request_timeout_s)
    machine = machine_facts()
    inputs = world_samples(samples)
    backends = asyncio.run(
        _benchmark(
            model,
            inputs,
            configs,
            load,
            threads=threads,
            oracle_delay_ms=oracle_delay_ms,
            max_rounds=max_rounds,
            seconds=seconds,
            bound_ms=bound_ms,
            progress=progress,
        )
    )
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = list(os.getloadavg())
    data = model.read_bytes()
    backends["onnx"]["model"] = {
        "path": str(model),
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return {
        "goal_ratio": GOAL_RATIO,
        "machine": machine,
        "settings": {
            "samples": samples,
            "sample_shape": list(inputs[0].image.shape),
            "load": "closed loop: each client submits, waits for the reply, submits again",
            "concurrency": list(load.concurrency),
            "requests_per_burst": requests,
            "burst_seconds": burst_seconds,
            "request_timeout_s": request_timeout_s,
            "max_rounds": max_rounds,
            "seconds_budget_per_backend": seconds,
            "latency": "client side, submit to reply (queue + inference + event loop)",
        },
        "backends": backends,
    }


def report_table(report: dict[str, Any]) -> Table:
    """Every level of every backend and config; the best under the bound is starred."""
    table = Table(title=f"dynamic batching (B) vs batch 1 (A) under a p99 bound; goal B/A >= {GOAL_RATIO:g}")
    for column in ("backend", "cfg", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "batch", "best"):
        table.add_column(column, justify="right")
    for name, entry in report["backends"].items():
        for config, side in entry["configs"].items():
            best = side["best_under_bound"]
            for level in side["levels"]:
                starred = best is not None and best["concurrency"] == level["concurrency"]
                table.add_row(
                    name,
                    config,
                    str(level["concurrency"]),
                    f"{level['throughput_rps']:.1f}",
                    *(f"{level[key]:.1f}" if level[key] is not None else "-" for key in ("p50_ms", "p95_ms", "p99_ms")),
                    f"{level['mean_batch_size']:.2f}" if level["mean_batch_size"] is not None else "-",
                    "*" if starred else "",
                )
        ratio = entry["ratio_b_over_a"]
        shown = f"{ratio:.2f}" if ratio is not None else "-"
        table.add_row(name, "B/A", "", shown, "", "", f"<= {entry['bound_ms']:.1f}", "", "")
        table.add_row(name, "B/A peak", "", f"{entry['ratio_b_over_a_peak']:.2f}", "", "", "any", "", "")
    return table


@app.command(help=HELP)
def main(
    out: Annotated[Path, typer.Option(help="JSON file to write (its folder is created).")] = Path(
        "bench/results/cloud.json"
    ),
    model: Annotated[Path, typer.Option(help="YOLO ONNX model of the onnx backend.")] = DEFAULT_MODEL,
    samples: Annotated[int, typer.Option(min=1, max=200, help="World test images cycled through.")] = 16,
    concurrency: Annotated[
        list[int] | None, typer.Option(min=1, max=256, help="Clients of one level (repeat the option).")
    ] = None,
    batch: Annotated[int, typer.Option(min=2, max=64, help="B's max_batch_size.")] = 8,
    queue_delay_ms: Annotated[float, typer.Option(min=0.0, help="B's max_queue_delay_ms.")] = 10.0,
    requests: Annotated[int, typer.Option(min=1, help="Requests per burst (at least 2 per client).")] = 32,
    burst_seconds: Annotated[float, typer.Option(min=0.1, help="Longest a burst issues requests.")] = 3.0,
    threads: Annotated[int, typer.Option(min=0, help="onnx backend intra-op threads; 0: ORT default.")] = 0,
    oracle_delay_ms: Annotated[float, typer.Option(min=0.0, help="The oracle's time per batch.")] = 25.0,
    bound_ms: Annotated[float | None, typer.Option(help="Fixed p99 bound; default: 2 x A's p99 at 1 client.")] = None,
    seconds: Annotated[float, typer.Option(min=0.0, help="Time budget of the timed rounds, per backend.")] = 60.0,
    rounds: Annotated[int, typer.Option(min=1, help="Most rounds per backend.")] = 8,
) -> None:
    """Measure, write the JSON report and print a table."""
    if not model.is_file():
        hint = "run `make train`, or pass --model PATH" if model == DEFAULT_MODEL else "check the --model path"
        console.print(f"{model}: model file not found; {hint}")
        raise typer.Exit(code=2)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        report = benchmark(
            model,
            samples=samples,
            concurrency=concurrency or CONCURRENCY,
            batch=batch,
            queue_delay_ms=queue_delay_ms,
            requests=requests,
            burst_seconds=burst_seconds,
            threads=threads,
            oracle_delay_ms=oracle_delay_ms,
            max_rounds=rounds,
            seconds=seconds,
            bound_ms=bound_ms,
            progress=progress,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    Console(width=None if sys.stdout.isatty() else 120).print(report_table(report))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    app()
