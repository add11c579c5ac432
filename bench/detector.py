"""How close the edge detector runtime comes to ONNX Runtime alone, on camera-like frames.

Run as ``python -m bench.detector --out bench/results/detector.json`` (``make bench``).
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
import onnxruntime as ort
import typer
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.rounds import Step, run_rounds
from common.detect import Detection, Detector, DetectorConfig
from edge.track import CameraTracker
from sim.world.dataset import DatasetSpec, render_dataset_image

DEFAULT_MODEL = Path("sim/models/edge.onnx")
GOAL_RATIO = 0.9
CAPTION = "ms are per frame; pre, post, rest: the runtime's extra time; tracker: ByteTrack per frame (share of runtime)"

HELP = f"""Throughput of the edge detector runtime against ONNX Runtime alone, side by side.

For batch 1 and batch --batch, on --frames camera-like 640x480 BGR frames from the world generator
(test split, seed 0), four things are timed in every round, taking turns (A B, then B A...) so that
load from other work on the machine hits them alike:

\b
  runtime      Detector.detect (batch 1) / detect_batch (batch B): preprocess + inference + decode;
  raw          session.run alone, same ONNX Runtime session, on tensors preprocessed once beforehand;
  preprocess   Detector.preprocess alone (letterbox, BGR->RGB, HWC->CHW, /255);
  postprocess  Detector.postprocess alone on outputs computed once (decode, NMS, map boxes back);
  tracker      (batch 1 only) the agent's per-camera tracker (ByteTrack, edge/track) updated with
               each frame's detections, computed once, at 10 frames/s of capture time: what
               tracking adds to every detected frame, next to what detecting it costs.

Rounds go on until --rounds are done or --seconds are spent (a round is never cut short). Reported per
batch size: frames/s (median over rounds), p50/p95 ms per frame, ratio = runtime fps / raw fps
(goal >= {GOAL_RATIO}), and where the runtime's extra time goes. The JSON also records the machine,
the onnxruntime version and provider, and the model file.
"""

console = Console(stderr=True)
app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)


def camera_frames(count: int) -> list[NDArray[np.uint8]]:
    """``count`` 640x480 BGR frames of the world generator's test split (seed 0)."""
    spec = DatasetSpec(seed=0)
    return [np.asarray(render_dataset_image(spec, "test", index).image, np.uint8) for index in range(count)]


def batch_sizes(session: ort.InferenceSession, requested: int) -> list[int]:
    """Batch sizes to measure: 1 and ``requested``, or only the batch a fixed-batch model takes."""
    declared = session.get_inputs()[0].shape[0]
    if isinstance(declared, int) and declared > 0:
        # session.run cannot take any other count, so "raw" has no counterpart at other sizes.
        return [declared]
    return sorted({1, requested})


def chunks(frames: Sequence[NDArray[np.uint8]], size: int) -> list[Sequence[NDArray[np.uint8]]]:
    """``frames`` in consecutive batches of ``size`` (the last may be smaller)."""
    return [frames[start : start + size] for start in range(0, len(frames), size)]


def detector_steps(detector: Detector, frames: Sequence[NDArray[np.uint8]], batch: int) -> list[Step]:
    """The runtime, raw, preprocess and postprocess steps for one batch size."""
    # The detector's own session: a second one would keep a second thread pool spinning between
    # calls and steal the CPU from the first, which is not what the runtime pays.
    session: ort.InferenceSession = detector._session
    input_meta = session.get_inputs()[0]
    input_name = str(input_meta.name)
    output_name = str(session.get_outputs()[0].name)
    half = input_meta.type == "tensor(float16)"

    batches = chunks(frames, batch)
    counts = [len(chunk) for chunk in batches]
    prepared = [detector.preprocess(chunk) for chunk in batches]
    feeds = [tensor.astype(np.float16) if half else tensor for tensor, _ in prepared]
    outputs = [detector.run(tensor) for tensor, _ in prepared]
    shapes = [[frame.shape for frame in chunk] for chunk in batches]

    def runtime(chunk: Sequence[NDArray[np.uint8]]) -> Callable[[], object]:
        if batch == 1:
            return lambda: detector.detect(chunk[0])
        return lambda: detector.detect_batch(chunk)

    def raw(feed: NDArray[Any]) -> Callable[[], object]:
        return lambda: session.run([output_name], {input_name: feed})

    def preprocess(chunk: Sequence[NDArray[np.uint8]]) -> Callable[[], object]:
        return lambda: detector.preprocess(chunk)

    def postprocess(index: int) -> Callable[[], object]:
        letterboxes = prepared[index][1]
        return lambda: detector.postprocess(outputs[index], letterboxes, shapes[index])

    steps = [
        Step("runtime", [runtime(chunk) for chunk in batches], counts),
        Step("raw", [raw(feed) for feed in feeds], counts),
        Step("preprocess", [preprocess(chunk) for chunk in batches], counts),
        Step("postprocess", [postprocess(index) for index in range(len(batches))], counts),
    ]
    if batch == 1:
        steps.append(tracker_step([detector.detect(frame) for frame in frames]))
    return steps


def tracker_step(detections: Sequence[list[Detection]]) -> Step:
    """One tracker fed each frame's detections in turn, capture time moving on 0.1 s per frame."""
    tracker = CameraTracker(new_track_score=0.25, match_diou=-0.5, lost_after_s=3.0, frame_rate=10.0)
    clock = itertools.count()

    def update(found: list[Detection]) -> Callable[[], object]:
        return lambda: tracker.update(found, next(clock) / 10.0)

    return Step("tracker", [update(found) for found in detections], [1] * len(detections))


def summarise(steps: Sequence[Step], batch: int) -> dict[str, Any]:
    """One batch size's figures: each step's stats, the ratio and the breakdown of the overhead."""
    stats = {step.name: step.stats() for step in steps}
    runtime, raw = stats["runtime"], stats["raw"]
    round_ratios = np.asarray(steps[1].round_seconds) / np.asarray(steps[0].round_seconds)
    pre_ms = stats["preprocess"]["ms_per_frame"]
    post_ms = stats["postprocess"]["ms_per_frame"]
    tracking = {}
    if "tracker" in stats:
        tracking = {
            "tracker": stats["tracker"],
            # What tracking adds to a detected frame, as a share of detecting it (same rounds).
            "tracker_to_runtime": stats["tracker"]["ms_per_frame"] / runtime["ms_per_frame"],
        }
    return {
        "batch": batch,
        "runtime": runtime,
        "raw": raw,
        "ratio": runtime["fps"] / raw["fps"],
        # Paired per round, so less sensitive to a slow spell than the ratio of medians.
        "ratio_round_median": float(np.median(round_ratios)),
        "overhead_ms_per_frame": {
            "total": runtime["ms_per_frame"] - raw["ms_per_frame"],
            "preprocess": pre_ms,
            "postprocess": post_ms,
            # run()'s checks and the Python calls around them; noise can make it negative.
            "rest": runtime["ms_per_frame"] - raw["ms_per_frame"] - pre_ms - post_ms,
        },
        **tracking,
    }


def machine_facts(detector: Detector, config: DetectorConfig) -> dict[str, Any]:
    """What the figures depend on besides the code: CPU, libraries, provider, load."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": ort.__version__,
        "provider": detector.provider,
        "intra_op_threads": config.intra_op_threads or "ORT default",
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def model_facts(detector: Detector, path: Path) -> dict[str, Any]:
    """The model file and what the detector read from it."""
    data = path.read_bytes()
    return {
        "path": str(path),
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "input_hw": list(detector.input_size),
        "layout": detector.layout,
        "dynamic_batch": detector.dynamic_batch,
        "classes": len(detector.names),
    }


def benchmark(
    model: Path,
    frames: Sequence[NDArray[np.uint8]],
    *,
    batch: int = 8,
    seconds: float = 60.0,
    max_rounds: int = 30,
    intra_op_threads: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure runtime against raw inference on ``frames``; returns the report as a JSON-ready dict."""
    config = DetectorConfig(model_path=model, intra_op_threads=intra_op_threads)
    detector = Detector(config)
    sizes = batch_sizes(detector._session, batch)
    groups = {size: detector_steps(detector, frames, size) for size in sizes}
    machine = machine_facts(detector, config)

    on_round = None
    if progress is not None:
        task = progress.add_task("interleaved rounds", total=max_rounds)

        def on_round(done: int) -> None:
            progress.update(task, completed=done)

    done = run_rounds(list(groups.values()), max_rounds=max_rounds, seconds=seconds, on_round=on_round)
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = list(os.getloadavg())
    return {
        "goal_ratio": GOAL_RATIO,
        "machine": machine,
        "model": model_facts(detector, model),
        "settings": {
            "frames": len(frames),
            "frame_shape": list(frames[0].shape),
            "batch_sizes": sizes,
            "max_rounds": max_rounds,
            "seconds_budget": seconds,
            "rounds": done.rounds,
            "seconds_spent": done.seconds,
        },
        "configs": {f"batch_{size}": summarise(steps, size) for size, steps in groups.items()},
    }


def report_table(report: dict[str, Any]) -> Table:
    """The figures a person looks at first."""
    title = f"{report['model']['path']} on {report['machine']['provider']}, goal ratio >= {GOAL_RATIO}"
    table = Table(title=title, caption=CAPTION)
    for column in ("batch", "fps runtime", "fps raw", "ratio", "p50/p95 runtime", "p50/p95 raw"):
        table.add_column(column, justify="right")
    for column in ("pre", "post", "rest", "tracker"):
        table.add_column(column, justify="right")
    for entry in report["configs"].values():
        runtime, raw, overhead = entry["runtime"], entry["raw"], entry["overhead_ms_per_frame"]
        table.add_row(
            str(entry["batch"]),
            f"{runtime['fps']:.1f}",
            f"{raw['fps']:.1f}",
            f"{entry['ratio']:.3f}",
            f"{runtime['p50_ms']:.2f}/{runtime['p95_ms']:.2f}",
            f"{raw['p50_ms']:.2f}/{raw['p95_ms']:.2f}",
            f"{overhead['preprocess']:.3f}",
            f"{overhead['postprocess']:.3f}",
            f"{overhead['rest']:.3f}",
            f"{entry['tracker']['ms_per_frame']:.3f} ({entry['tracker_to_runtime']:.1%})" if "tracker" in entry else "",
        )
    return table


@app.command(help=HELP)
def main(
    out: Annotated[Path, typer.Option(help="JSON file to write (its folder is created).")] = Path(
        "bench/results/detector.json"
    ),
    model: Annotated[Path, typer.Option(help="YOLO ONNX model to measure.")] = DEFAULT_MODEL,
    frames: Annotated[int, typer.Option(min=1, help="Camera frames to cycle through per round.")] = 32,
    batch: Annotated[int, typer.Option(min=1, help="Batch size measured besides batch 1.")] = 8,
    seconds: Annotated[float, typer.Option(min=0.0, help="Time budget of the timed rounds.")] = 60.0,
    rounds: Annotated[int, typer.Option(min=1, help="Most rounds to time.")] = 30,
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime intra-op threads; 0: its default.")] = 0,
) -> None:
    """Measure, write the JSON report and print a table."""
    if not model.is_file():
        hint = (
            "run `make train` to train and export it (about an hour on 2 cores), or pass --model PATH"
            if model == DEFAULT_MODEL
            else "check the --model path"
        )
        console.print(f"{model}: model file not found; {hint}")
        raise typer.Exit(code=2)
    console.print(f"rendering {frames} camera frames...")
    images = camera_frames(frames)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        report = benchmark(
            model,
            images,
            batch=batch,
            seconds=seconds,
            max_rounds=rounds,
            intra_op_threads=threads,
            progress=progress,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    # A fixed width when piped (make bench, CI logs) so the table is not squeezed to 80 columns.
    Console(width=None if sys.stdout.isatty() else 120).print(report_table(report))
    console.print(f"{report['settings']['rounds']} rounds in {report['settings']['seconds_spent']:.1f} s; wrote {out}")


if __name__ == "__main__":
    app()
