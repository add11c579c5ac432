"""`edgeglm-sim`: the world generator, detector evaluation and the demo."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sim.world.clips import ClipSpec, write_clip
from sim.world.dataset import SPLITS, DatasetSpec, write_dataset

MODELS_DIR = Path(__file__).resolve().parent / "models"

app = typer.Typer(
    help=(
        "EdgeGLM simulation harness. `world` generates camera scenes with ground truth from photos shipped "
        "in scikit-image and matplotlib; `eval-detector` measures an ONNX detector on them; `demo` runs the "
        "edge detector on a fresh sample and prints what it found against the truth."
    ),
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def progress_bar() -> Progress:
    """One style of progress bar for every long job."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@app.command()
def world(
    out: Annotated[Path, typer.Option(help="Folder to write the dataset and clips into (created).")],
    seed: Annotated[int, typer.Option(help="Generator seed: the same seed gives the same files.")] = 0,
    train: Annotated[int, typer.Option(min=0, help="Training images.")] = 800,
    val: Annotated[int, typer.Option(min=0, help="Validation images.")] = 200,
    test: Annotated[int, typer.Option(min=0, help="Test images.")] = 200,
    clips: Annotated[int, typer.Option(min=0, help="Camera clips to render.")] = 2,
    clip_seconds: Annotated[float, typer.Option(min=1.0, help="Length of each clip in seconds.")] = 60.0,
    fps: Annotated[float, typer.Option(min=0.5, max=60.0, help="Frames per second of the clips.")] = 5.0,
    video: Annotated[bool, typer.Option(help="Also write each clip as an MJPG .avi next to its frames.")] = False,
) -> None:
    """Generate the world: a YOLO dataset (images/, labels/, meta/, data.yaml) and camera clips (clips/)."""
    spec = DatasetSpec(seed=seed, train=train, val=val, test=test)
    clip_specs = [
        ClipSpec(seed=seed, camera=camera, seconds=clip_seconds, fps=fps, night=camera % 4 == 3)
        for camera in range(clips)
    ]
    with progress_bar() as bar:
        images = bar.add_task("images", total=sum(spec.count(s) for s in SPLITS))
        write_dataset(spec, out, progress=lambda n: bar.advance(images, n))
        for clip in clip_specs:
            task = bar.add_task(f"clip cam{clip.camera}", total=clip.frames)
            write_clip(
                clip,
                out / "clips" / f"cam{clip.camera}",
                video,
                progress=functools.partial(bar.advance, task),
            )
    console.print(f"world written to {out} (seed {seed})")


@app.command("eval-detector")
def eval_detector(
    model: Annotated[Path, typer.Argument(help="An ultralytics-exported YOLO ONNX file.", exists=True, dir_okay=False)],
    split: Annotated[str, typer.Option(help="Dataset split to score: train, val or test.")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON to this file.")] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Dataset folder from `world`; default: generate from --seed into a cache."),
    ] = None,
    seed: Annotated[int, typer.Option(help="World seed used when --data is not given.")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N images.")] = None,
) -> None:
    """Score a detector (mAP50, mAP50-95, per class, hard vs easy images) through the edge runtime."""
    from sim.eval.detector import ensure_dataset, evaluate

    if split not in SPLITS:
        raise typer.BadParameter(
            f"{split!r} is not a split (expected one of {', '.join(SPLITS)})", param_hint="--split"
        )
    dataset = ensure_dataset(data, seed, split)
    total = len(list((dataset / "images" / split).glob("*.jpg")))
    total = min(total, limit) if limit else total
    with progress_bar() as bar:
        task = bar.add_task(f"scoring {model.name}", total=total)
        result = evaluate(model, dataset, split, limit=limit, progress=lambda n: bar.advance(task, n))
    report = result.as_json(model, split, dataset)
    text = json.dumps(report, indent=1)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    typer.echo(text)


@app.command("detect-demo")
def detect_demo(
    out: Annotated[Path, typer.Option(help="Folder for the generated sample and the results.")] = Path(".demo"),
    model: Annotated[Path, typer.Option(help="Edge detector ONNX.", dir_okay=False)] = MODELS_DIR / "edge.onnx",
    images: Annotated[int, typer.Option(min=1, max=500, help="How many fresh scenes to generate.")] = 24,
    seed: Annotated[int, typer.Option(help="Seed of the fresh sample (not the training seed).")] = 2026,
) -> None:
    """Generate fresh scenes and run the edge detector on them, printing found vs truth."""
    from sim.demo import run_demo

    run_demo(out, model, images, seed, console)


@app.command("fleet-demo")
def fleet_demo(
    out: Annotated[Path, typer.Option(help="Run folder: clips, configs, logs, summary.json.")] = Path(
        "runs/fleet-demo"
    ),
    edges: Annotated[int, typer.Option(min=1, max=16, help="Edge agents (one process each).")] = 3,
    cameras: Annotated[int, typer.Option(min=1, max=8, help="Cameras per edge.")] = 2,
    seconds: Annotated[float, typer.Option(min=5, max=3600, help="Length of every camera's clip.")] = 60.0,
    fps: Annotated[float, typer.Option(min=1, max=30, help="Camera frame rate.")] = 5.0,
    seed: Annotated[int, typer.Option(help="World seed of the clips.")] = 0,
) -> None:
    """One fleet, one mode: a cloud and edge agent processes on loopback, an operator's policy change midway."""
    from sim.fleet.report import print_summary
    from sim.fleet.run import FleetSpec, run_fleet

    spec = FleetSpec(edges=edges, cameras=cameras, seconds=seconds, fps=fps, seed=seed)
    summary = run_fleet(out, spec, console)
    print_summary(summary, console)
    console.print(f"summary written to {out / 'summary.json'}; logs in {out / 'logs'}")


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML, e.g. sim/scenarios/retail-4g.yaml.")],
    out: Annotated[Path, typer.Option(help="Report folder: report.json, report.md, plots, logs per mode.")],
    link_mode: Annotated[
        str | None, typer.Option(help="Override the scenario's link emulation: inproc, or netns (root only).")
    ] = None,
    modes: Annotated[
        str | None, typer.Option(help="Comma-separated modes to run instead of the scenario's, e.g. edgeglm,sedna_ibt.")
    ] = None,
    duration: Annotated[float | None, typer.Option(min=5, help="Override the clips' length in seconds.")] = None,
    backend: Annotated[
        str | None, typer.Option(help="Override the cloud backend: onnx, glm (the world GLM) or oracle.")
    ] = None,
) -> None:
    """Run a scenario: every mode (cloud_only, edge_only, sedna_ibt, random, edgeglm) as real processes on the
    same clips over emulated links, then compare them in DIR/report.md and DIR/report.json with plots."""
    from common.config import format_errors
    from sim.harness.scenario import run_scenario
    from sim.scenarios.spec import Scenario, ScenarioError, load_scenario

    overrides: dict[str, object] = {}
    if link_mode is not None:
        overrides["link_mode"] = link_mode
    if modes is not None:
        overrides["modes"] = [m.strip() for m in modes.split(",") if m.strip()]
    if duration is not None:
        overrides["duration_s"] = duration
    try:
        spec = load_scenario(scenario, overrides)
        if backend is not None:
            spec = spec.model_validate({**spec.model_dump(), "cloud": {**spec.cloud.model_dump(), "backend": backend}})
    except ScenarioError as err:
        console.print(str(err), style="red", markup=False)  # markup off: a path like edges[1] is not a tag
        raise typer.Exit(2) from err
    except ValidationError as err:
        console.print(format_errors(f"{scenario.name} with --backend", err, Scenario), style="red", markup=False)
        raise typer.Exit(2) from err
    run_scenario(spec, out, console)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("runs/demo"),
) -> None:
    """The short default scenario (sim/scenarios/demo.yaml): both transports, an outage, the closed loop, and the
    comparison of every mode, in a few minutes on 2 cores."""
    from sim.harness.scenario import run_scenario
    from sim.scenarios.spec import SCENARIOS_DIR, load_scenario

    run_scenario(load_scenario(SCENARIOS_DIR / "demo.yaml"), out, console)


if __name__ == "__main__":
    app()
