"""Evaluate the world GLM on held-out crops: `python -m sim.glm.report --model sim/models/glm-world`.

Writes `eval.json` and `REPORT.md` in the model folder: label and decision accuracy, parseable-JSON
rate, confusion by class, and the same on crops of a photo the model never saw (skimage's
cameraman, a person), which is where it fails.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from cloud.backends.glm import GlmBackend, GlmBackendConfig
from sim.glm.crops import Crop
from sim.glm.evaluate import EvalCase, Scores, case_for, held_out_cases, score
from sim.world.compose import Placement, degrade, paste, random_conditions, render_background
from sim.world.photos import SpriteSource

app = typer.Typer(add_completion=False, help=__doc__)

# A photo of a person that no training crop comes from (the world's persons are the astronaut and
# Grace Hopper): the cameraman. Box chosen by eye, in the photo's pixels.
UNSEEN_PERSON = SpriteSource("skimage", "camera.png", (0, 50, 340, 512), "person")


def unseen_cases(count: int, seed: int = 99) -> list[EvalCase]:
    """Crops of the unseen cameraman photo pasted on world backgrounds, each with a seeded edge claim."""
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        side = int(rng.integers(96, 200))
        canvas = np.ascontiguousarray(render_background(rng, side, side))
        height = side * float(rng.uniform(0.7, 0.95))
        width = height * 340 / 462
        x, y = (side - width) / 2, (side - height) / 2
        paste(canvas, UNSEEN_PERSON, Placement(x, y, width, height, bool(rng.random() < 0.5)))
        image = degrade(canvas, random_conditions(rng), rng)
        cases.append(case_for(Crop(image, "person", False, index), 100_000 + index, rng))
    return cases


async def evaluate(model: Path, frames: int, unseen: int, batch_size: int) -> dict[str, Any]:
    """Scores on held-out world crops and on the unseen photo, with the wall time of each."""
    backend = GlmBackend(GlmBackendConfig(model_path=model, max_batch_size=batch_size))
    await backend.start()
    try:
        cases = held_out_cases(frames)
        started = time.monotonic()
        held_out = await score(backend, cases, batch_size)
        held_out_s = time.monotonic() - started
        unseen_scores: Scores = await score(backend, unseen_cases(unseen), batch_size)
    finally:
        await backend.close()
    return {
        "held_out": held_out.summary(),
        "held_out_frames": frames,
        "held_out_wall_time_s": round(held_out_s, 1),
        "held_out_ms_per_sample": round(1000 * held_out_s / max(1, len(cases)), 1),
        "unseen_photo": unseen_scores.summary(),
        "batch_size": batch_size,
        "model_version": backend.model_version,
    }


@app.command()
def main(
    model: Annotated[Path, typer.Option(help="The world GLM folder.")] = Path("sim/models/glm-world"),
    frames: Annotated[int, typer.Option(min=1, help="Test-split frames the held-out crops come from.")] = 200,
    unseen: Annotated[int, typer.Option(min=1, help="Crops of the unseen photo.")] = 60,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per generate call.")] = 8,
) -> None:
    """Evaluate, then write eval.json and REPORT.md next to the model."""
    result = asyncio.run(evaluate(model, frames, unseen, batch_size))
    train = json.loads((model / "train.json").read_text())
    result["train"] = train
    result["size_bytes"] = (model / "model.safetensors").stat().st_size
    for key, name in (("judge", "judge.json"), ("judge_blind", "judge-blind.json")):  # sim.glm.judge, run first
        judged = model / name
        result[key] = json.loads(judged.read_text()) if judged.is_file() else None
    (model / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (model / "REPORT.md").write_text(render(result))
    held = result["held_out"]
    typer.echo(
        f"held-out: decision {held['decision_accuracy']:.1%}, labels {held['label_accuracy']:.1%}, "
        f"JSON {held['parseable_json_rate']:.1%} over {held['samples']} crops; "
        f"unseen photo: labels {result['unseen_photo']['label_accuracy']:.1%}"
    )


def judge_section(judge: dict[str, Any] | None, blind: dict[str, Any] | None = None) -> str:
    """The judge comparison (`sim.glm.judge`) as a table, or a line saying it was not run; `blind`: the same
    with a constant score shown to the GLM (`--shown-score`), what its eyes alone decide."""
    if judge is None:
        return "## As the cloud's judge\n\nNot measured: run `python -m sim.glm.judge`.\n"
    runs = [("the edge's score", judge)] + ([(f"score shown {blind['score_shown_to_glm']}", blind)] if blind else [])
    rows = "".join(
        f"| {name} ({subset['edge']['samples']}, {subset['true_share']:.0%} true) | {shown} | "
        f"{subset['edge']['accuracy']:.3f} | {subset['glm']['accuracy']:.3f} | "
        f"{subset['glm']['accuracy'] - subset['edge']['accuracy']:+.3f} | "
        f"{subset['edge']['recall']:.3f} / {subset['glm']['recall']:.3f} | "
        f"{subset['edge']['precision']:.3f} / {subset['glm']['precision']:.3f} |\n"
        for shown, run in runs
        for name, subset in run["subsets"].items()
    )
    low, high = judge["band"]
    return f"""## As the cloud's judge (`python -m sim.glm.judge`, `judge.json`)

The committed edge detector on {judge["frames"]} test-split frames; each detection is true when an
object of its label lies under it (IoU >= 0.5). The edge decides alone by its score (kept at >=
{judge["edge_threshold"]:.3f}, the middle of its band); the GLM sees the whole frame with that claim
through the `glm` backend and keeps it when it answers confirmed. "hard" are the detections scored
{low}-{high}: the ones EdgeGLM asks the cloud about. The prompt tells the GLM the edge's score; shown a
constant instead (`--shown-score`, `judge-blind.json`), what it decides comes from the image alone.

| detections | GLM told | edge accuracy | GLM accuracy | gain | recall edge / GLM | precision edge / GLM |
|---|---|---|---|---|---|---|
{rows}"""


def render(result: dict[str, Any]) -> str:
    """REPORT.md from the evaluation and training summaries."""
    held, unseen, train = result["held_out"], result["unseen_photo"], result["train"]
    labels = sorted({name for row in held["confusion"].values() for name in row} | set(held["confusion"]))
    header = "| truth \\ answer | " + " | ".join(labels) + " |\n|" + "---|" * (len(labels) + 1) + "\n"
    rows = "".join(
        f"| {truth} | " + " | ".join(str(row.get(name, 0)) for name in labels) + " |\n"
        for truth, row in held["confusion"].items()
    )
    versions = ", ".join(f"{k} {v}" for k, v in train["versions"].items())
    by_claim, by_hardness = held["decision_accuracy_by_claim"], held["decision_accuracy_by_hardness"]
    schedule = f"{train['steps']} of {train['steps_planned']} planned, batch {train['batch_size']}"
    hard = train.get("edge_detection_crops", 0)
    data = (
        f"{train['train_crops']} crops: {train['train_crops'] - hard} of {train['train_frames']} train-split frames "
        f"(seed {train['seed']}) and {hard} of the edge model's own detections on {train.get('edge_frames', 0)} "
        "train-split frames it never saw (`sim/glm/hard.py`)"
    )
    return f"""# World GLM: a small GLM-4V trained on the sim world

`Glm4vForConditionalGeneration` with {train["parameters"] / 1e6:.2f} M parameters, trained from scratch
by `make train-glm` (`python -m sim.glm.train`), evaluated by `python -m sim.glm.report` through the
cloud's real `glm` backend (greedy decoding, batches of {result["batch_size"]}). Files: fp16 safetensors
({result["size_bytes"] / 1e6:.1f} MB), tokenizer, image processor config; `eval.json` has every figure.

## Held-out crops ({held["samples"]} crops of {result["held_out_frames"]} test-split frames, seed 0)

| figure | value |
|---|---|
| decision accuracy (confirmed / rejected as ground truth says) | {held["decision_accuracy"]:.1%} |
| label accuracy (labels equal the crop's class, or none) | {held["label_accuracy"]:.1%} |
| parseable JSON answers | {held["parseable_json_rate"]:.1%} |
| decision accuracy when the edge claimed the right label / a wrong one / nothing | \
{by_claim.get("right", 0):.1%} / {by_claim.get("wrong", 0):.1%} / {by_claim.get("none", 0):.1%} |
| decision accuracy on easy / hard crops (small, occluded, dark, blurred) | \
{by_hardness.get("easy", 0):.1%} / {by_hardness.get("hard", 0):.1%} |
| CPU time per sample in batches of {result["batch_size"]} (2 shared cores) | {result["held_out_ms_per_sample"]} ms |

Confusion (rows: what the crop shows; columns: the first label answered, "nothing" for none):

{header}{rows}
{judge_section(result.get("judge"), result.get("judge_blind"))}
## Where it fails: photos it has never seen

The world is built from a handful of photos (one or two per class), and the held-out crops are new
frames of the SAME photos: new poses, sizes, backgrounds, lighting and noise, not new objects. Train
and test share every photo. On {unseen["samples"]} crops of a person photo the model never saw
(skimage's cameraman), label accuracy is {unseen["label_accuracy"]:.1%} and decision accuracy
{unseen["decision_accuracy"]:.1%} (answers: {unseen["confusion"].get("person", {})}). This model knows
these photos, not the classes: it is a stand-in that lets the cloud's GLM path run and be tested end to
end on a CPU, not a detector of people, cats, motorcycles, cups or rockets in general.

## Training

| | |
|---|---|
| steps | {schedule}, AdamW peak lr {train["lr"]}, loss on answer tokens only |
| data | {data} |
| final loss (answer tokens) | {train["final_loss"]} |
| wall time | {train["wall_time_s"] / 60:.1f} min on 2 CPU cores shared with other work |
| versions | {versions} |
"""


if __name__ == "__main__":
    app()
