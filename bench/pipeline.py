"""How close the whole edge agent comes to ONNX Runtime alone, on the frames of a world clip.

Run as ``python -m bench.pipeline --out bench/results/pipeline.json`` (``make bench``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.detector import DEFAULT_MODEL, chunks, machine_facts, model_facts
from bench.rounds import Step, run_rounds
from common.detect import Detection, Detector, DetectorConfig
from common.detect.image import decode_image
from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from edge.convert import encode_sample_image
from edge.gate import FrameGate
from edge.metrics import EdgeMetrics
from edge.mine import Miner, MiningContext
from edge.policy.settings import GatePolicy, MiningPolicy, UplinkPolicy
from edge.status import counter_total
from sim.world.clips import ClipSpec, write_clip

GOAL_RATIO = 0.9
CAMERA = "cam0"
POLL_S = 0.005
"""How often the agent's counters are read: at most 5 ms off on a span of seconds, and few wake-ups."""
GATE_PASSES_ALL = GatePolicy(changed_area_fraction=0.0)
STAGES = ("decode", "gate", "preprocess", "inference", "postprocess", "mine", "encode")
STAGE_THREADS = {
    "decode": "camera reader thread",
    "gate": "default executor",
    "preprocess": "detect thread",
    "inference": "detect thread",
    "postprocess": "detect thread",
    "mine": "event loop",
    "encode": "default executor",
}

HELP = f"""Frames/s of the real edge agent against ONNX Runtime alone, side by side, on one world clip.

The clip (seed 0, --clip-seconds at --fps, 640x480 JPEG files) is written to a temporary folder. Every
round times, taking turns (A B, then B A...):

\b
  pipeline  the real EdgeAgent on the clip folder (realtime: false, looping; uplink to a port nobody
            listens on): read + decode JPEG in the camera thread, gate (changed_area_fraction 0.0, so
            every frame goes on to detection), Detector.detect_batch in batches of up to --batch,
            mining under the default MiningPolicy, JPEG encoding of the frames it sends.
            Timed in steady state: from the first full batch detected until --passes times the clip's
            frames more are detected, reading the agent's own counters every {POLL_S * 1000:g} ms.
  raw       session.run alone on the same frames, preprocessed once beforehand, same batch size and
            the same --threads.
  stages    each stage alone on the same frames, for the breakdown: decode, gate, preprocess,
            inference (= raw), postprocess (decode + NMS), mine, encode.
  raw_beside_decode  raw again while another thread decodes the clip's JPEGs without pause: what
            inference alone gets on this machine with a camera thread as its neighbour.

Rounds go on until --rounds are done or --seconds are spent (a round is never cut short; each agent
run is bounded by --round-timeout). Reported: frames/s of both, ratio = pipeline / raw (goal >=
{GOAL_RATIO}), and ms per frame of each stage with the thread it runs in (stages in different threads
overlap, so their sum may exceed the pipeline's time per frame).
"""

console = Console(stderr=True)
app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)


def write_world_clip(folder: Path, seconds: float, fps: float) -> list[Path]:
    """A world clip of ``seconds`` at ``fps`` (seed 0, objects crossing often) in ``folder``; its JPEG files."""
    spec = ClipSpec(seed=0, seconds=seconds, fps=fps, quiet_start_seconds=1.0, mean_gap_seconds=3.0)
    clip = write_clip(spec, folder)
    return sorted((clip / "frames").glob("*.jpg"))


def unused_port() -> int:
    """A loopback port nothing listens on (bound then released): the agent's cloud is away."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SpanStep(Step):
    """A step whose calls time themselves: each returns the seconds to count (a span inside a longer run)."""

    def run_round(self, record: bool) -> None:
        """Make every call once; keep the seconds they report when ``record``."""
        total = 0.0
        for call, frames in zip(self.calls, self.frames, strict=True):
            elapsed = call()
            if not isinstance(elapsed, float):
                raise TypeError(f"step {self.name!r}: a call returned {elapsed!r}, not seconds")
            total += elapsed
            if record:
                self.call_seconds.append(elapsed)
                self.call_frames.append(frames)
        if record:
            self.round_seconds.append(total)


@dataclass(frozen=True)
class AgentRound:
    """What one agent run did between the two readings of its counters that bound the timed span."""

    seconds: float
    frames: int
    batches: int
    detect_seconds: float
    samples_encoded: int


@dataclass(frozen=True)
class _Reading:
    at: float
    detected: int
    batches: int
    detect_seconds: float
    mined: int


class AgentRunner:
    """Runs the real EdgeAgent once per call and returns the seconds it took for ``frames`` frames."""

    def __init__(
        self, model: Path, frames_dir: Path, work_dir: Path, *, frames: int, batch: int, threads: int, timeout_s: float
    ) -> None:
        self._model = model
        self._frames_dir = frames_dir
        self._work_dir = work_dir
        self._frames = frames
        self._batch = batch
        self._threads = threads
        self._timeout_s = timeout_s
        self._port = unused_port()
        self.rounds: list[AgentRound] = []

    def config(self, state_dir: Path) -> EdgeConfig:
        """One camera on the clip folder, read as fast as consumed, looping so the pipeline never runs dry."""
        return EdgeConfig.model_validate(
            {
                "edge_id": "bench",
                "state_dir": str(state_dir),
                "cameras": [{"id": CAMERA, "url": str(self._frames_dir), "realtime": False, "loop": True}],
                "detector": {"model_path": str(self._model), "intra_op_threads": self._threads},
                "uplink": {"target": f"127.0.0.1:{self._port}"},
                "policy": {"initial": {"gate": GATE_PASSES_ALL.model_dump()}},
                "health": {"host": "127.0.0.1", "port": 0},
                # Stopped only once the timed frames are detected: nothing left worth waiting for.
                "pipeline": {"detect_batch_size": self._batch, "drain_deadline_s": 0},
            }
        )

    def __call__(self) -> float:
        """One run of the agent; the seconds of its timed span, scaled to ``frames`` frames."""
        done = asyncio.run(self._run())
        self.rounds.append(done)
        return done.seconds * self._frames / done.frames

    async def _run(self) -> AgentRound:
        state_dir = Path(tempfile.mkdtemp(prefix="agent-", dir=self._work_dir))
        agent = EdgeAgent(self.config(state_dir))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop), name="bench-agent")
        try:
            return await asyncio.wait_for(self._watch(agent.metrics, task), self._timeout_s)
        except TimeoutError as exc:
            raise TimeoutError(
                f"the agent did not detect {self._frames} frames within {self._timeout_s:g} s "
                "(raise --round-timeout on a slow or busy machine)"
            ) from exc
        finally:
            stop.set()
            await asyncio.wait_for(task, self._timeout_s)

    async def _watch(self, metrics: EdgeMetrics, task: asyncio.Task[None]) -> AgentRound:
        """Read the counters until ``frames`` frames are detected after the first full batch."""
        start: _Reading | None = None
        while not task.done():
            now = _read(metrics)
            if start is None:
                # The first batch fills an empty pipeline; steady state starts after it.
                if now.detected >= self._batch:
                    start = now
            elif now.detected - start.detected >= self._frames:
                return AgentRound(
                    seconds=now.at - start.at,
                    frames=now.detected - start.detected,
                    batches=now.batches - start.batches,
                    detect_seconds=now.detect_seconds - start.detect_seconds,
                    samples_encoded=now.mined - start.mined,
                )
            await asyncio.sleep(POLL_S)
        await task  # raises what ended the agent early, if anything did
        raise RuntimeError(f"the agent stopped before detecting {self._frames} frames")


def _read(metrics: EdgeMetrics) -> _Reading:
    registry = metrics.registry
    return _Reading(
        at=time.perf_counter(),
        detected=int(counter_total(metrics.frames_detected)),
        batches=int(registry.get_sample_value("edgeglm_edge_detect_seconds_count") or 0.0),
        detect_seconds=registry.get_sample_value("edgeglm_edge_detect_seconds_sum") or 0.0,
        mined=int(counter_total(metrics.mined)),
    )


def stage_steps(detector: Detector, paths: Sequence[Path], batch: int) -> list[Step]:
    """The raw step and one step per pipeline stage, on the clip's frames (``inference`` is raw)."""
    session = detector._session  # the detector's own session, as in bench.detector
    input_meta = session.get_inputs()[0]
    input_name, output_name = str(input_meta.name), str(session.get_outputs()[0].name)
    half = input_meta.type == "tensor(float16)"

    images = [decode_image(path.read_bytes(), str(path)) for path in paths]
    batches = chunks(images, batch)
    counts = [len(chunk) for chunk in batches]
    prepared = [detector.preprocess(chunk) for chunk in batches]
    feeds = [tensor.astype(np.float16) if half else tensor for tensor, _ in prepared]
    outputs = [detector.run(tensor) for tensor, _ in prepared]
    shapes = [[image.shape for image in chunk] for chunk in batches]
    found = [
        detections
        for index, (_, letterboxes) in enumerate(prepared)
        for detections in detector.postprocess(outputs[index], letterboxes, shapes[index])
    ]
    gate = FrameGate(GATE_PASSES_ALL)
    miner = Miner(MiningPolicy(), rng=random.Random(0))
    uplink = UplinkPolicy()
    ones = [1] * len(images)

    def decode(path: Path) -> Callable[[], object]:
        return lambda: decode_image(path.read_bytes(), str(path))

    def check(image: NDArray[np.uint8]) -> Callable[[], object]:
        return lambda: gate.check(image)

    def preprocess(chunk: Sequence[NDArray[np.uint8]]) -> Callable[[], object]:
        return lambda: detector.preprocess(chunk)

    def raw(feed: NDArray[Any]) -> Callable[[], object]:
        return lambda: session.run([output_name], {input_name: feed})

    def postprocess(index: int) -> Callable[[], object]:
        return lambda: detector.postprocess(outputs[index], prepared[index][1], shapes[index])

    def mine(seq: int, detections: list[Detection]) -> Callable[[], object]:
        return lambda: miner.decide(MiningContext(CAMERA, seq, True, detections))

    def beside_decode() -> None:
        # The camera thread decodes while the detect thread infers; on this kind of machine the two
        # share caches and memory bandwidth. This is raw inference with such a neighbour, decoding
        # without pause (the camera thread decodes one frame per frame detected, with pauses).
        stop = threading.Event()

        def decode_all() -> None:
            while not stop.is_set():
                for path in paths:
                    if stop.is_set():
                        return
                    decode_image(path.read_bytes(), str(path))

        neighbour = threading.Thread(target=decode_all, name="bench-decode", daemon=True)
        neighbour.start()
        try:
            for feed in feeds:
                session.run([output_name], {input_name: feed})
        finally:
            stop.set()
            neighbour.join()

    def encode(image: NDArray[np.uint8], detections: list[Detection]) -> Callable[[], object]:
        # Every frame is encoded here for a steady figure; the agent encodes only those it sends.
        return lambda: encode_sample_image(image, detections, uplink.image_mode, uplink.jpeg_quality)

    return [
        Step("raw", [raw(feed) for feed in feeds], counts),
        Step("raw_beside_decode", [beside_decode], [len(images)]),
        Step("decode", [decode(path) for path in paths], ones),
        Step("gate", [check(image) for image in images], ones),
        Step("preprocess", [preprocess(chunk) for chunk in batches], counts),
        Step("postprocess", [postprocess(index) for index in range(len(batches))], counts),
        Step("mine", [mine(seq, dets) for seq, dets in enumerate(found)], ones),
        Step("encode", [encode(image, dets) for image, dets in zip(images, found, strict=True)], ones),
    ]


def summarise(pipeline: Step, steps: Sequence[Step], rounds: Sequence[AgentRound]) -> dict[str, Any]:
    """Both sides' figures, their ratio and the per-stage breakdown."""
    stats = {step.name: step.stats() for step in steps}
    agent, raw, beside = pipeline.stats(), stats["raw"], stats["raw_beside_decode"]
    raw_step = steps[0]
    round_ratios = (sum(pipeline.frames) / np.asarray(pipeline.round_seconds)) / (
        sum(raw_step.frames) / np.asarray(raw_step.round_seconds)
    )
    frames = sum(r.frames for r in rounds)
    encoded_share = sum(r.samples_encoded for r in rounds) / frames
    encode_ms_per_image = stats["encode"]["ms_per_frame"]
    per_frame = {name: stats["raw" if name == "inference" else name]["ms_per_frame"] for name in STAGES}
    # The agent encodes only the frames it sends: the encode cost per clip frame is scaled to that share.
    per_frame["encode"] = encode_ms_per_image * encoded_share
    detect_thread = per_frame["preprocess"] + per_frame["inference"] + per_frame["postprocess"]
    return {
        "pipeline": agent,
        "raw": raw,
        "ratio": agent["fps"] / raw["fps"],
        # Paired per round, so less sensitive to a slow spell than the ratio of medians.
        "ratio_round_median": float(np.median(round_ratios)),
        "raw_beside_decode": beside,
        "ratio_to_raw_beside_decode": agent["fps"] / beside["fps"],
        "agent": {
            "mean_batch_size": frames / max(1, sum(r.batches for r in rounds)),
            # From the agent's own detect_seconds histogram (medians over rounds): the detect call,
            # executor hand-off included, and the detect thread's wait for the loop between batches.
            "detect_call_ms_per_frame": float(np.median([1000.0 * r.detect_seconds / r.frames for r in rounds])),
            "detect_idle_ms_per_frame": float(
                np.median([1000.0 * (r.seconds - r.detect_seconds) / r.frames for r in rounds])
            ),
            "samples_encoded_per_frame": encoded_share,
            "frames_timed_per_round": [r.frames for r in rounds],
        },
        "stages_ms_per_frame": per_frame,
        "stage_threads": STAGE_THREADS,
        "encode_ms_per_image": encode_ms_per_image,
        # Stages in other threads overlap the detect thread, so its stages alone bound the pipeline.
        "detect_thread_ms_per_frame": detect_thread,
        "detect_thread_bound_fps": 1000.0 / detect_thread,
        "sum_of_stages_ms_per_frame": sum(per_frame.values()),
        "overhead_ms_per_frame": {
            "total": agent["ms_per_frame"] - raw["ms_per_frame"],
            "preprocess": per_frame["preprocess"],
            "postprocess": per_frame["postprocess"],
            # The other threads slowing the detect thread down, and the hand-offs between batches
            # (agent.detect_idle_ms_per_frame is the part spent waiting); noise can make it negative.
            "rest": agent["ms_per_frame"] - detect_thread,
        },
    }


def benchmark(
    model: Path,
    *,
    clip_seconds: float = 20.0,
    fps: float = 5.0,
    passes: int = 3,
    batch: int = 4,
    threads: int = 1,
    seconds: float = 90.0,
    max_rounds: int = 10,
    round_timeout_s: float = 60.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure the agent against raw inference on a world clip; returns the report as a JSON-ready dict."""
    config = DetectorConfig(model_path=model, intra_op_threads=threads)
    detector = Detector(config)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as work:
        work_dir = Path(work)
        paths = write_world_clip(work_dir / "clip", clip_seconds, fps)
        frame_shape = list(decode_image(paths[0].read_bytes(), str(paths[0])).shape)
        runner = AgentRunner(
            model,
            paths[0].parent,
            work_dir,
            frames=passes * len(paths),
            batch=batch,
            threads=threads,
            timeout_s=round_timeout_s,
        )
        pipeline = SpanStep("pipeline", [runner], [passes * len(paths)])
        steps = stage_steps(detector, paths, batch)
        machine = machine_facts(detector, config)

        on_round = None
        if progress is not None:
            task = progress.add_task("interleaved rounds", total=max_rounds)

            def on_round(done: int) -> None:
                progress.update(task, completed=done)

        done = run_rounds([[pipeline, *steps]], max_rounds=max_rounds, seconds=seconds, on_round=on_round)
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = list(os.getloadavg())
    timed = runner.rounds[-len(pipeline.round_seconds) :]  # the first run was the warm-up
    return {
        "goal_ratio": GOAL_RATIO,
        "machine": machine,
        "model": model_facts(detector, model),
        "settings": {
            "clip": {"seed": 0, "seconds": clip_seconds, "fps": fps, "frames": len(paths), "frame_shape": frame_shape},
            "clip_passes_timed_per_agent_run": passes,
            "batch": batch,
            "intra_op_threads": threads or "ORT default",
            "gate": "GatePolicy(changed_area_fraction=0.0): every frame goes on to detection",
            "mining": "MiningPolicy() defaults (the agent's built-in policy)",
            "camera": "clip folder, realtime: false, loop: true; uplink to an unused loopback port (no cloud)",
            "max_rounds": max_rounds,
            "seconds_budget": seconds,
            "rounds": done.rounds,
            "seconds_spent": done.seconds,
        },
        **summarise(pipeline, steps, timed),
    }


def report_table(report: dict[str, Any]) -> Table:
    """The figures a person looks at first."""
    settings = report["settings"]
    title = (
        f"edge agent vs raw ORT, {report['model']['path']}, batch {settings['batch']}, "
        f"threads {settings['intra_op_threads']}; goal ratio >= {GOAL_RATIO}"
    )
    table = Table(title=title, caption="ms per frame; stages in different threads overlap")
    table.add_column("", justify="left")
    table.add_column("fps", justify="right")
    table.add_column("ms/frame", justify="right")
    for name in ("pipeline", "raw", "raw_beside_decode"):
        table.add_row(name, f"{report[name]['fps']:.1f}", f"{report[name]['ms_per_frame']:.2f}")
    table.add_row("ratio to raw", f"{report['ratio']:.3f}", f"(paired {report['ratio_round_median']:.3f})")
    table.add_row("ratio to raw beside decode", f"{report['ratio_to_raw_beside_decode']:.3f}", "")
    for name, ms in report["stages_ms_per_frame"].items():
        table.add_row(f"  {name} [{STAGE_THREADS[name]}]", "", f"{ms:.3f}")
    return table


@app.command(help=HELP)
def main(
    out: Annotated[Path, typer.Option(help="JSON file to write (its folder is created).")] = Path(
        "bench/results/pipeline.json"
    ),
    model: Annotated[Path, typer.Option(help="YOLO ONNX model the agent runs.")] = DEFAULT_MODEL,
    clip_seconds: Annotated[float, typer.Option(min=0.4, help="Length of the world clip.")] = 20.0,
    fps: Annotated[float, typer.Option(min=1.0, max=30.0, help="Frame rate of the world clip.")] = 5.0,
    passes: Annotated[int, typer.Option(min=1, max=100, help="Clip passes timed per agent run.")] = 3,
    batch: Annotated[int, typer.Option(min=1, max=64, help="Detect batch size of both sides.")] = 4,
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime intra-op threads; 0: its default.")] = 1,
    seconds: Annotated[float, typer.Option(min=0.0, help="Time budget of the timed rounds.")] = 90.0,
    rounds: Annotated[int, typer.Option(min=1, help="Most rounds to time.")] = 10,
    round_timeout: Annotated[float, typer.Option(min=1.0, help="Longest one agent run may take.")] = 60.0,
) -> None:
    """Measure, write the JSON report and print a table."""
    if not model.is_file():
        hint = "run `make train`, or pass --model PATH" if model == DEFAULT_MODEL else "check the --model path"
        console.print(f"{model}: model file not found; {hint}")
        raise typer.Exit(code=2)
    # Without a cloud the agent warns at every shutdown that samples went unacknowledged: expected here.
    edge_logger = logging.getLogger("edge")
    level = edge_logger.level
    edge_logger.setLevel(logging.ERROR)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        try:
            report = benchmark(
                model,
                clip_seconds=clip_seconds,
                fps=fps,
                passes=passes,
                batch=batch,
                threads=threads,
                seconds=seconds,
                max_rounds=rounds,
                round_timeout_s=round_timeout,
                progress=progress,
            )
        finally:
            edge_logger.setLevel(level)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    Console(width=None if sys.stdout.isatty() else 120).print(report_table(report))
    console.print(f"{report['settings']['rounds']} rounds in {report['settings']['seconds_spent']:.1f} s; wrote {out}")


if __name__ == "__main__":
    app()
