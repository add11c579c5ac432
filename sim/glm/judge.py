"""Is the sim's GLM judge stronger than the edge on the samples the edge asks about?

`python -m sim.glm.judge --out sim/models/glm-world/judge.json` runs the committed edge detector on
frames of the world dataset's test split (never trained on), keeps every detection, and labels each
true (an object of that label lies under it, IoU >= 0.5) or false. The hard ones are those the edge
is unsure of: scores inside its default uncertainty band (0.25-0.6), the samples EdgeGLM sends. On
them it compares two deciders:

- the edge alone: keep a detection when its score is at least the band's middle (the best single
  threshold it has; the score alone is all it knows);
- the world GLM through the `glm` backend: the whole frame as a sample claiming that label and box
  (the backend focuses on the claim), kept when the answer is `confirmed`.

Accuracy (kept true + dropped false, over all) and precision and recall of the kept, for both, on
the hard subset and on all detections, are written to the JSON file and printed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import track

from cloud.backends.glm import GlmBackend, GlmBackendConfig
from cloud.convert import CloudDetection, SampleInput
from common.boxes import iou
from common.detect import Detector, DetectorConfig
from sim.glm.evaluate import world_sample
from sim.world.dataset import DatasetSpec, render_dataset_image
from sim.world.photos import CLASSES

MODELS = Path(__file__).resolve().parents[1] / "models"
BAND = (0.25, 0.6)  # the edge's default uncertainty band (edge.yaml's initial policy)
MATCH_IOU = 0.5
app = typer.Typer(add_completion=False, help=__doc__)


def detections(frames: int, model: Path) -> list[tuple[SampleInput, bool]]:
    """One whole-frame sample per detection of the edge model on test frames, and whether it is true."""
    detector = Detector(DetectorConfig(model_path=model, conf_threshold=BAND[0]))
    spec = DatasetSpec(seed=0)
    found = []
    for index in track(range(frames), description="edge detector on test frames"):
        scene = render_dataset_image(spec, "test", index)
        for number, det in enumerate(detector.detect(scene.image)):
            true = any(obj.label == det.label and iou(obj.box, det.box) >= MATCH_IOU for obj in scene.objects)
            claim = CloudDetection(det.label, CLASSES.index(det.label), det.score, det.box)
            found.append((world_sample(scene.image, (claim,), f"test{index}-{number}", index), true))
    return found


def with_score(sample: SampleInput, score: float) -> SampleInput:
    """`sample` with its claims' scores replaced by `score`: what the GLM decides from its eyes alone (the edge's
    decision and the subsets keep the real score)."""
    return dataclasses.replace(sample, detections=tuple(dataclasses.replace(d, score=score) for d in sample.detections))


def scores(kept: list[bool], truth: list[bool]) -> dict[str, float | int]:
    """Accuracy of keep/drop against truth; precision and recall of what was kept."""
    tp = sum(k and t for k, t in zip(kept, truth, strict=True))
    fp = sum(k and not t for k, t in zip(kept, truth, strict=True))
    fn = sum(not k and t for k, t in zip(kept, truth, strict=True))
    tn = len(truth) - tp - fp - fn
    return {
        "samples": len(truth),
        "accuracy": (tp + tn) / len(truth) if truth else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
    }


async def judge(
    model: Path, glm: Path, frames: int, batch_size: int, shown_score: float | None = None
) -> dict[str, Any]:
    """Both deciders on every detection; the scores on the hard subset and on all."""
    cases = detections(frames, model)
    asked = [sample if shown_score is None else with_score(sample, shown_score) for sample, _ in cases]
    backend = GlmBackend(GlmBackendConfig(model_path=glm, max_batch_size=batch_size))
    await backend.start()
    try:
        decisions: list[str] = []
        for first in track(range(0, len(cases), batch_size), description="world GLM on the claims"):
            results = await backend.infer(asked[first : first + batch_size])
            decisions += [result.decision for result in results]
    finally:
        await backend.close()
    middle = (BAND[0] + BAND[1]) / 2
    report: dict[str, Any] = {
        "frames": frames,
        "band": list(BAND),
        "edge_threshold": middle,
        "score_shown_to_glm": "the edge's" if shown_score is None else shown_score,
        "subsets": {},
    }
    for name, keep in (
        ("hard", lambda s: BAND[0] <= s.detections[0].score <= BAND[1]),
        ("all", lambda s: True),
    ):
        chosen = [i for i, (sample, _) in enumerate(cases) if keep(sample)]
        truth = [cases[i][1] for i in chosen]
        edge = [cases[i][0].detections[0].score >= middle for i in chosen]
        cloud = [decisions[i] == "confirmed" for i in chosen]
        unsure = sum(decisions[i] == "unsure" for i in chosen)
        report["subsets"][name] = {
            "true_share": sum(truth) / len(truth) if truth else 0.0,
            "edge": scores(edge, truth),
            "glm": {**scores(cloud, truth), "unsure": unsure},
        }
    return report


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="JSON file to write.")] = MODELS / "glm-world" / "judge.json",
    frames: Annotated[int, typer.Option(min=1, max=2000, help="Test-split frames.")] = 120,
    model: Annotated[Path, typer.Option(help="Edge detector ONNX.", dir_okay=False)] = MODELS / "edge.onnx",
    glm: Annotated[Path, typer.Option(help="World GLM folder.", file_okay=False)] = MODELS / "glm-world",
    batch_size: Annotated[int, typer.Option(min=1, max=64, help="Samples per generate call.")] = 8,
    shown_score: Annotated[
        float | None,
        typer.Option(
            "--shown-score", min=0.0, max=1.0, help="Tell the GLM this score instead of the edge's (its eyes alone)."
        ),
    ] = None,
) -> None:
    """Compare the edge's own score with the world GLM's verdict on the edge's detections."""
    console = Console(stderr=True)
    report = asyncio.run(judge(model, glm, frames, batch_size, shown_score))
    out.write_text(json.dumps(report, indent=1) + "\n")
    for name, subset in report["subsets"].items():
        edge, cloud = subset["edge"], subset["glm"]
        console.print(
            f"{name}: {edge['samples']} detections ({subset['true_share']:.0%} true); accuracy edge "
            f"{edge['accuracy']:.3f} vs glm {cloud['accuracy']:.3f}; precision {edge['precision']:.3f} vs "
            f"{cloud['precision']:.3f}; recall {edge['recall']:.3f} vs {cloud['recall']:.3f}"
        )
    console.print(f"written to {out}")


if __name__ == "__main__":
    app()
