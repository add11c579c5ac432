"""The fine-tune's training set: the field dataset's training split mixed with a sample of the base set.

The field export is small and holds what the edge got wrong; trained on alone, the model would
forget the rest of the world. So each field training image goes in `field_repeat` times, beside
`base_images` images drawn (seeded) from the base set's training split. The held-out field split is
never in the training split: it judges the candidate (it is copied in as ultralytics' val set, which
only its last epoch scores). Files are copied, not linked, so the run's folder is a dataset that
stands alone and ultralytics' label caches are written there, not into the export.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cloud.retrain.config import FineTuneSettings
from cloud.retrain.evaluate import HELD_OUT, RetrainDataError, dataset_classes


@dataclass
class MixSummary:
    """What the fine-tune was trained on: the manifest's `training` and the report's."""

    field_dataset: str
    base_dataset: str
    field_images: int = 0
    field_backgrounds: int = 0
    field_repeat: int = 1
    base_images: int = 0
    objects: Counter[str] = field(default_factory=Counter)
    field_export: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON."""
        return {
            "field_dataset": self.field_dataset,
            "base_dataset": self.base_dataset,
            "field_images": self.field_images,
            "field_backgrounds": self.field_backgrounds,
            "field_repeat": self.field_repeat,
            "base_images": self.base_images,
            "training_images": self.field_images * self.field_repeat + self.base_images,
            "objects": dict(sorted(self.objects.items())),
            "field_export": self.field_export,
        }


def _pairs(dataset: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label file) of every image of a split; an image without a label file is a background."""
    images = sorted((dataset / "images" / split).glob("*.jpg"))
    return [(image, dataset / "labels" / split / f"{image.stem}.txt") for image in images]


def _copy(image: Path, label: Path, out: Path, stem: str, classes: list[str], objects: Counter[str]) -> bool:
    """Copy one image and its labels into out/{images,labels}/train under `stem`; True when it has objects."""
    shutil.copyfile(image, out / "images" / "train" / f"{stem}.jpg")
    text = label.read_text() if label.is_file() else ""
    (out / "labels" / "train" / f"{stem}.txt").write_text(text)
    ids = [int(line.split()[0]) for line in text.splitlines() if line.strip()]
    objects.update(classes[index] for index in ids)
    return bool(ids)


def build_mix(field_dir: Path, base_dir: Path, out: Path, classes: list[str], settings: FineTuneSettings) -> MixSummary:
    """Write the mixed training set under `out`: images/ and labels/ of train (the mix) and of the held-out
    field split (never trained on), and data.yaml."""
    base_classes = dataset_classes(base_dir)
    if base_classes != classes:
        raise RetrainDataError(f"{base_dir}/data.yaml: classes {base_classes} are not the edge model's {classes}")
    field_train = _pairs(field_dir, "train")
    if not field_train:
        raise RetrainDataError(f"{field_dir}: no images in images/train, nothing to fine-tune on")
    if out.exists():
        shutil.rmtree(out)
    for sub, split in ((sub, split) for sub in ("images", "labels") for split in ("train", HELD_OUT)):
        (out / sub / split).mkdir(parents=True)
    summary = MixSummary(str(field_dir.resolve()), str(base_dir.resolve()), field_repeat=settings.field_repeat)
    report_path = field_dir / "report.json"
    if report_path.is_file():
        summary.field_export = json.loads(report_path.read_text())
    for image, label in field_train:
        summary.field_images += 1
        for copy in range(settings.field_repeat):
            has_objects = _copy(image, label, out, f"field{copy}_{image.stem}", classes, summary.objects)
        summary.field_backgrounds += not has_objects
    base_train = _pairs(base_dir, "train")
    sample = random.Random(settings.seed).sample(base_train, min(settings.base_images, len(base_train)))
    for image, label in sample:
        _copy(image, label, out, f"base_{image.stem}", classes, summary.objects)
        summary.base_images += 1
    # ultralytics wants a val set and scores it after the last epoch (last.pt is kept whatever it says);
    # a copy, so its label cache is written here, not into the export.
    for image, label in _pairs(field_dir, HELD_OUT):
        shutil.copyfile(image, out / "images" / HELD_OUT / image.name)
        (out / "labels" / HELD_OUT / label.name).write_text(label.read_text() if label.is_file() else "")
    layout = {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": f"images/{HELD_OUT}",
        "names": dict(enumerate(classes)),
    }
    (out / "data.yaml").write_text(yaml.safe_dump(layout, sort_keys=False))
    return summary
