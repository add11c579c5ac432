"""Evaluate an ONNX detector on a split of the world dataset, through the edge runtime itself.

The numbers measure what the edge will actually do: the same letterbox, decode and NMS code, at the
low confidence threshold (0.001) used for mAP as ultralytics' validator does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from common.detect import Detector, DetectorConfig
from sim.eval.metrics import Box, DetectionEvaluator
from sim.world.dataset import DatasetSpec, read_metadata, write_dataset
from sim.world.photos import CLASSES

EVAL_CONF_THRESHOLD = 0.001
EVAL_IOU_THRESHOLD = 0.7


def default_cache_dir() -> Path:
    """Where generated datasets are kept between runs (EDGEGLM_CACHE_DIR overrides)."""
    return Path(os.environ.get("EDGEGLM_CACHE_DIR", Path.home() / ".cache" / "edgeglm"))


def ensure_dataset(data: Path | None, seed: int, split: str) -> Path:
    """The dataset folder to read; generated from `seed` into the cache when none is given."""
    if data is not None:
        if not (data / "images" / split).is_dir():
            raise FileNotFoundError(
                f"{data}: no images/{split} folder (expected a dataset made by `edgeglm-sim world`)"
            )
        return data
    folder = default_cache_dir() / f"world-seed{seed}"
    if not (folder / "meta" / f"{split}.jsonl").exists():
        write_dataset(DatasetSpec(seed=seed), folder, splits=(split,))
    return folder


def read_labels(path: Path, width: int, height: int) -> list[Box]:
    """Ground-truth boxes of one YOLO label file, in pixels."""
    boxes = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        cls, cx, cy, w, h = line.split()
        x, y, bw, bh = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
        boxes.append(Box(int(cls), x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2))
    return boxes


def read_image(path: Path) -> NDArray[np.uint8]:
    """A BGR frame from disk, or a clear error naming the file."""
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise ValueError(f"{path}: not a readable image")
    return np.asarray(frame, dtype=np.uint8)


# Image subsets scored apart: hard vs easy, then each kind of hard case on its own.
SUBSETS: tuple[str, ...] = ("hard", "easy", "small", "occluded", "dark", "blur", "noise", "jpeg")


def rounded(value: float) -> float | None:
    """Four decimals, or None (JSON null) for an undefined score such as an empty subset."""
    return None if math.isnan(value) else round(value, 4)


def subsets_of(meta: dict[str, object]) -> list[str]:
    """The subsets one image belongs to, from its metadata line."""
    names = ["hard" if meta.get("hard") else "easy"]
    objects = meta.get("objects", [])
    assert isinstance(objects, list)
    names += [tag for tag in ("small", "occluded") if any(o.get(tag) for o in objects)]
    conditions = meta.get("conditions", [])
    assert isinstance(conditions, list)
    return names + [str(c) for c in conditions]


@dataclass
class EvalResult:
    """Everything `eval-detector` writes."""

    overall: DetectionEvaluator
    subsets: dict[str, DetectionEvaluator]

    @property
    def hard(self) -> DetectionEvaluator:
        """Images with a small, occluded, dark or blurred case."""
        return self.subsets["hard"]

    def as_json(self, model: Path, split: str, dataset: Path) -> dict[str, object]:
        """The JSON report: overall mAP, per class, and the hard/easy subsets."""
        map50, map50_95 = self.overall.summary()
        per_class = {
            CLASSES[i]: {"map50": round(c.ap50, 4), "map50_95": round(c.ap50_95, 4), "instances": c.instances}
            for i, c in enumerate(self.overall.per_class())
            if c.instances > 0
        }
        subsets = {}
        for name, evaluator in self.subsets.items():
            s50, s50_95 = evaluator.summary()
            subsets[name] = {"map50": rounded(s50), "map50_95": rounded(s50_95), "images": evaluator.images}
        return {
            "model": str(model),
            "split": split,
            "dataset": str(dataset),
            "images": self.overall.images,
            "map50": rounded(map50),
            "map50_95": rounded(map50_95),
            "per_class": per_class,
            "subsets": subsets,
        }


def evaluate(
    model: Path,
    dataset: Path,
    split: str,
    limit: int | None = None,
    batch: int = 8,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run the detector over the split and score it against the labels."""
    detector = Detector(
        DetectorConfig(model_path=model, conf_threshold=EVAL_CONF_THRESHOLD, iou_threshold=EVAL_IOU_THRESHOLD)
    )
    meta = {str(m["image"]): subsets_of(m) for m in read_metadata(dataset, split)}
    images = sorted((dataset / "images" / split).glob("*.jpg"))[:limit]
    result = EvalResult(DetectionEvaluator(len(CLASSES)), {name: DetectionEvaluator(len(CLASSES)) for name in SUBSETS})
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        frames = [read_image(path) for path in chunk]
        for path, frame, found in zip(chunk, frames, detector.detect_batch(frames), strict=True):
            height, width = frame.shape[:2]
            truths = read_labels(dataset / "labels" / split / f"{path.stem}.txt", width, height)
            preds = [Box(d.class_id, *d.box, score=d.score) for d in found]
            result.overall.add(preds, truths)
            for name in meta.get(path.stem, []):
                result.subsets[name].add(preds, truths)
        if progress is not None:
            progress(len(chunk))
    return result
