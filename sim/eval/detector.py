"""Evaluate an ONNX detector on a split of the world dataset, through the edge runtime itself.

The numbers measure what the edge will actually do: the same letterbox, decode and NMS code, at the
low confidence threshold (0.001) used for mAP as ultralytics' validator does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.detect import Detector, DetectorConfig
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


@dataclass
class EvalResult:
    """Everything `eval-detector` writes."""

    overall: DetectionEvaluator
    hard: DetectionEvaluator
    easy: DetectionEvaluator

    def as_json(self, model: Path, split: str, dataset: Path) -> dict[str, object]:
        """The JSON report: overall mAP, per class, and the hard/easy subsets."""
        map50, map50_95 = self.overall.summary()
        per_class = {
            CLASSES[i]: {"map50": round(c.ap50, 4), "map50_95": round(c.ap50_95, 4), "instances": c.instances}
            for i, c in enumerate(self.overall.per_class())
            if c.instances > 0
        }
        subsets = {}
        for name, evaluator in (("hard", self.hard), ("easy", self.easy)):
            s50, s50_95 = evaluator.summary()
            subsets[name] = {"map50": round(s50, 4), "map50_95": round(s50_95, 4), "images": evaluator.images}
        return {
            "model": str(model),
            "split": split,
            "dataset": str(dataset),
            "images": self.overall.images,
            "map50": round(map50, 4),
            "map50_95": round(map50_95, 4),
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
    meta = {str(m["image"]): bool(m["hard"]) for m in read_metadata(dataset, split)}
    images = sorted((dataset / "images" / split).glob("*.jpg"))[:limit]
    result = EvalResult(*(DetectionEvaluator(len(CLASSES)) for _ in range(3)))
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        frames = [read_image(path) for path in chunk]
        for path, frame, found in zip(chunk, frames, detector.detect_batch(frames), strict=True):
            height, width = frame.shape[:2]
            truths = read_labels(dataset / "labels" / split / f"{path.stem}.txt", width, height)
            preds = [Box(d.class_id, *d.box, score=d.score) for d in found]
            result.overall.add(preds, truths)
            (result.hard if meta.get(path.stem, False) else result.easy).add(preds, truths)
        if progress is not None:
            progress(len(chunk))
    return result
