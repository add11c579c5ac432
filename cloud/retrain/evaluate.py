"""Scoring the current and the candidate edge model on the same images, through the edge runtime.

Both splits go through `sim.eval.detector.evaluate` (the edge's own letterbox, decode and NMS, at
mAP's low confidence threshold), so the numbers are what the edge will do, and the same as
`edgeglm-sim eval-detector` prints. The sim package is imported inside the functions: the cloud
image (which has no sim/) still imports this module.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from cloud.retrain.config import RetrainConfig
from cloud.retrain.promote import Comparison, Evaluation

# The field export's held-out split (cloud.dataset.export.SPLITS): it judges, it is never trained on.
HELD_OUT = "val"


class RetrainDataError(ValueError):
    """A dataset train-edge cannot use; the message names the folder and what to do."""


def dataset_classes(dataset: Path) -> list[str]:
    """Class names of a YOLO dataset's data.yaml, by class id."""
    path = dataset / "data.yaml"
    try:
        layout = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RetrainDataError(f"{path}: cannot read the dataset's data.yaml ({err})") from err
    names = layout.get("names") if isinstance(layout, dict) else None
    if isinstance(names, dict):
        return [str(names[index]) for index in sorted(names)]
    if isinstance(names, list):
        return [str(name) for name in names]
    raise RetrainDataError(f"{path}: no names: list of classes")


def check_field_dataset(field: Path, classes: list[str], split: str) -> None:
    """The field export must have the held-out split, and the model's classes in the model's order."""
    for sub in ("images", "labels"):
        if not (field / sub / split).is_dir():
            raise RetrainDataError(
                f"{field}: no {sub}/{split} folder (expected `edgeglm-cloud dataset export --out {field}`)"
            )
    found = dataset_classes(field)
    if found != classes:
        raise RetrainDataError(
            f"{field}/data.yaml: classes {found} are not the edge model's {classes} in its order; export again "
            f"with --classes {','.join(classes)}"
        )


def field_view(field: Path, split: str, work: Path) -> Path:
    """A folder `evaluate` reads the field split from: the export's images and labels linked in, and an
    empty meta/<split>.jsonl (field images carry no world metadata, so no hard/easy subsets)."""
    view = work / "field-eval"
    if view.exists():
        shutil.rmtree(view)
    for sub in ("images", "labels"):
        (view / sub).mkdir(parents=True)
        (view / sub / split).symlink_to((field / sub / split).resolve(), target_is_directory=True)
    (view / "meta").mkdir()
    (view / "meta" / f"{split}.jsonl").write_text("")
    return view


def evaluate_split(model: Path, dataset: Path, split: str, limit: int | None = None) -> Evaluation:
    """One model on one split, as `edgeglm-sim eval-detector` scores it."""
    from sim.eval.detector import evaluate

    result = evaluate(model, dataset, split, limit=limit)
    report: dict[str, Any] = result.as_json(model, split, dataset)
    if not any(subset["images"] for subset in report["subsets"].values()):
        del report["subsets"]  # a dataset without world metadata (the field's): every subset is empty
    return Evaluation.from_json(report)


def compare(current: Path, candidate: Path, field: Path, base: Path, config: RetrainConfig, work: Path) -> Comparison:
    """Both models on the held-out field split (linked from the export `field`) and on the base split."""
    view = field_view(field, HELD_OUT, work)
    limit = config.eval_limit
    return Comparison(
        current_field=evaluate_split(current, view, HELD_OUT, limit),
        candidate_field=evaluate_split(candidate, view, HELD_OUT, limit),
        current_base=evaluate_split(current, base, config.base_split, limit),
        candidate_base=evaluate_split(candidate, base, config.base_split, limit),
    )
