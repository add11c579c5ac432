"""What the closed loop buys and what it costs: uplink share and recall as bands move, and its CPU time.

Run as ``python -m bench.closed_loop --out bench/results/closed_loop.json`` (``make bench``).

Quality: a generated stream (true objects score U(0.4, 1.0) on the edge, false ones U(0.0, 0.6), the
cloud's decision is the truth) goes through an edge with the fleet band [0.25, 0.6] and a random
audit; each round the cloud sees what that edge would send and plans the band (`plan_band`, as the
controller does); the band in force and its true recall and upload share (on a fresh, fully
observed population) are recorded per round, over several seeds. The analytic optimum for targets
0.95 is [0.43, 0.578].

Cost: `BandController.observe` per verdict (on the event loop) and `plan_band` per class and
evaluation (in a worker thread), medians of several rounds.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from cloud.convert import CloudDetection, SampleInput
from cloud.metrics import CloudMetrics
from cloud.policy import PolicyEngine, PolicySettings, PolicySigner
from cloud.policy.bands import ScorePair, estimate, plan_band
from cloud.policy.loop import BandController, ClosedLoopConfig
from cloud.store.pairs import PairStore
from protos import sample_pb2, verdict_pb2

app = typer.Typer(add_completion=False)
START = (0.25, 0.6)
TARGET = 0.95


def objects(rng: random.Random, count: int) -> list[tuple[float, bool]]:
    """`count` true and `count` false objects as (edge score, truth), mixed."""
    made = [(rng.uniform(0.4, 1.0), True) for _ in range(count)] + [
        (rng.uniform(0.0, 0.6), False) for _ in range(count)
    ]
    rng.shuffle(made)
    return made


def seen(
    rng: random.Random, population: list[tuple[float, bool]], band: tuple[float, float], rate: float
) -> list[ScorePair]:
    """What the cloud gets from an edge with `band`: every object in it, an audited share of the others."""
    out = []
    for score, truth in population:
        if band[0] <= score <= band[1]:
            out.append(ScorePair(score, truth))
        elif rng.random() < rate:
            out.append(ScorePair(score, truth, weight=1.0 / rate, audit=True))
    return out


def truly(band: tuple[float, float], reference: list[ScorePair]) -> dict[str, float]:
    """Recall, precision of local accepts and upload share of `band` on the fully observed reference."""
    result = estimate(reference, *band)
    return {"low": band[0], "high": band[1], "recall": result.recall or 0.0, "upload": result.upload}


def convergence(seeds: int, rounds: int, per_round: int, window: int, rate: float) -> dict[str, Any]:
    """The band and its true recall and upload after each round, per seed, and the medians at the end."""
    reference = [ScorePair(s, t) for s, t in objects(random.Random(10_000), 50_000)]
    runs = []
    for seed in range(seeds):
        rng = random.Random(seed)
        band, pairs, trace = START, list[ScorePair](), [truly(START, reference)]
        for _ in range(rounds):
            pairs = (pairs + seen(rng, objects(rng, per_round), band, rate))[-window:]
            step = plan_band(
                pairs,
                band,
                target_recall=TARGET,
                target_precision=TARGET,
                hysteresis=0.02,
                min_pairs=200,
                min_audit_pairs=20,
            )
            if step.proposed is not None:
                band = (step.proposed.low, step.proposed.high)
            trace.append(truly(band, reference))
        runs.append(trace)
    final = [run[-1] for run in runs]
    return {
        "start": runs[0][0],
        "final_median": {key: statistics.median(f[key] for f in final) for key in ("low", "high", "recall", "upload")},
        "final_min_recall": min(f["recall"] for f in final),
        "analytic": {"low": 0.43, "high": 0.52 / 0.9},
        "runs": runs,
    }


def sample(score: float, index: int) -> SampleInput:
    return SampleInput(
        sample_id=f"s-{index}",
        edge_id="gw-1",
        camera_id="cam0",
        frame_seq=index,
        captured_at=0.0,
        image=np.zeros((8, 8, 3), dtype=np.uint8),
        crop=None,
        frame_size=(640, 480),
        detections=(CloudDetection("person", 0, score, (10.0, 10.0, 50.0, 90.0)),),
        mined_reason="uncertainty_band",
        priority=0.5,
        trace_id="t",
    )


async def observe_cost(folder: Path, verdicts: int, rounds: int) -> dict[str, float]:
    """Microseconds per `observe` of a one-detection verdict (the controller's task does not run meanwhile)."""
    engine = PolicyEngine(PolicySigner.ephemeral(), folder / "state.json", CloudMetrics(), fleet=PolicySettings())
    config = ClosedLoopConfig(enabled=True, evaluate_every_pairs=1_000_000, window_pairs=20_000, min_pairs=200)
    metrics = CloudMetrics()
    controller = BandController(config, engine, PairStore(folder / "pairs.sqlite", 20_000), metrics.registry)
    await controller.start()
    box = sample_pb2.Box(x1=10, y1=10, x2=50, y2=90)
    found = verdict_pb2.Verdict(
        decision=verdict_pb2.DECISION_CONFIRMED, detections=[sample_pb2.Detection(label="person", score=0.9, box=box)]
    )
    inputs = [sample(random.random(), i) for i in range(verdicts)]
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for item in inputs:
            controller.observe(item, found)
        timings.append((time.perf_counter() - started) / verdicts * 1e6)
    await controller.close()
    return {"median_us": statistics.median(timings), "min_us": min(timings), "max_us": max(timings)}


def plan_cost(window: int, rounds: int) -> dict[str, float]:
    """Milliseconds of one `plan_band` on a window of `window` pairs."""
    rng = random.Random(1)
    pairs = seen(rng, objects(rng, window), START, 0.1)[:window]
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        plan_band(
            pairs, START, target_recall=TARGET, target_precision=TARGET, hysteresis=0.02, min_pairs=1, min_audit_pairs=0
        )
        timings.append((time.perf_counter() - started) * 1e3)
    return {"pairs": len(pairs), "median_ms": statistics.median(timings), "min_ms": min(timings)}


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path(
        "bench/results/closed_loop.json"
    ),
    seeds: Annotated[int, typer.Option(min=1, max=50, help="Independent simulated edges.")] = 5,
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Evaluations per simulated edge.")] = 8,
    per_round: Annotated[
        int, typer.Option(min=100, max=1_000_000, help="True (and false) objects per round.")
    ] = 10_000,
    window: Annotated[int, typer.Option(min=100, max=1_000_000, help="Pairs kept per class.")] = 20_000,
    audit_rate: Annotated[float, typer.Option(min=0.001, max=1.0, help="Edge's random audit rate.")] = 0.1,
) -> None:
    """Measure how the closed loop moves the band (uplink, recall) and its CPU cost."""
    console = Console(stderr=True)
    with console.status("closed loop: simulating and timing"), tempfile.TemporaryDirectory() as temp:
        report: dict[str, Any] = {
            "machine": {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "load_average": list(os.getloadavg()),
            },
            "settings": {
                "seeds": seeds,
                "rounds": rounds,
                "objects_per_round": per_round,
                "window_pairs": window,
                "audit_rate": audit_rate,
                "targets": {"recall": TARGET, "precision": TARGET},
            },
            "convergence": convergence(seeds, rounds, per_round, window, audit_rate),
            "observe_per_verdict": asyncio.run(observe_cost(Path(temp), 20_000, 5)),
            "plan_band": [plan_cost(size, 5) for size in (2_000, 20_000)],
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    start, final = report["convergence"]["start"], report["convergence"]["final_median"]
    console.print(
        f"band [{start['low']:.2f}, {start['high']:.2f}] -> [{final['low']:.3f}, {final['high']:.3f}]: upload "
        f"{start['upload']:.3f} -> {final['upload']:.3f}, recall {start['recall']:.3f} -> {final['recall']:.3f}; "
        f"observe {report['observe_per_verdict']['median_us']:.1f} us/verdict; written to {out}"
    )


if __name__ == "__main__":
    app()
