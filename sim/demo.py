"""The demo of the foundation: fresh scenes, the edge detector, and what it got right and wrong."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from common.detect import Detection, Detector, DetectorConfig
from sim.eval.detector import read_image
from sim.eval.metrics import iou_matrix
from sim.world.dataset import DatasetSpec, write_dataset
from sim.world.photos import CLASSES

MATCH_IOU = 0.5


def match(found: list[Detection], truth: list[tuple[int, tuple[float, float, float, float]]]) -> tuple[int, int, int]:
    """(true positives, false positives, misses) at IoU 0.5 with the class required to agree."""
    if not found or not truth:
        return 0, len(found), len(truth)
    ious = iou_matrix(
        np.array([d.box for d in found], dtype=np.float64),
        np.array([box for _, box in truth], dtype=np.float64),
    )
    same_class = np.array([[d.class_id == cls for cls, _ in truth] for d in found])
    ious = np.where(same_class, ious, 0.0)
    taken: set[int] = set()
    tp = 0
    for i in np.argsort([-d.score for d in found]):
        candidates = [j for j in np.argsort(-ious[i]) if ious[i, j] >= MATCH_IOU and j not in taken]
        if candidates:
            taken.add(int(candidates[0]))
            tp += 1
    return tp, len(found) - tp, len(truth) - tp


def run_demo(out: Path, model: Path, images: int, seed: int, console: Console) -> None:
    """Generate `images` scenes with `seed`, detect, print per-image and overall results."""
    if not model.is_file():
        raise SystemExit(f"{model}: edge model not found (run `make train`, or pass --model)")
    spec = DatasetSpec(seed=seed, train=0, val=0, test=images)
    console.print(f"generating {images} fresh scenes (seed {seed}, not seen in training) into {out}")
    write_dataset(spec, out / "world", splits=("test",))
    detector = Detector(DetectorConfig(model_path=model))
    console.print(f"edge detector {model.name}: input {detector.input_size}, provider {detector.provider}")
    meta = {
        m["image"]: m
        for m in (json.loads(line) for line in (out / "world" / "meta" / "test.jsonl").read_text().splitlines())
    }
    table = Table(title=f"edge detector on {images} fresh scenes (IoU ≥ {MATCH_IOU}, conf ≥ 0.25)")
    for column in ("image", "truth", "found", "tp", "fp", "miss", "hard cases"):
        table.add_column(column)
    totals: Counter[str] = Counter()
    annotated = out / "annotated"
    annotated.mkdir(parents=True, exist_ok=True)
    records = []
    for path in sorted((out / "world" / "images" / "test").glob("*.jpg")):
        frame = read_image(path)
        found = detector.detect(frame)
        info = meta[path.stem]
        truth = [(CLASSES.index(o["label"]), tuple(o["box"])) for o in info["objects"]]
        tp, fp, miss = match(found, truth)
        totals.update(tp=tp, fp=fp, miss=miss)
        hard = [t for t in ("small", "occluded") if any(o[t] for o in info["objects"])] + info["conditions"]
        table.add_row(
            path.stem,
            ", ".join(CLASSES[c] for c, _ in truth) or "-",
            ", ".join(f"{d.label} {d.score:.2f}" for d in found) or "-",
            str(tp),
            str(fp),
            str(miss),
            ", ".join(hard),
        )
        draw(frame, found, truth)
        cv2.imwrite(str(annotated / path.name), frame)
        records.append({"image": path.stem, "tp": tp, "fp": fp, "miss": miss, "hard": hard})
    console.print(table)
    precision = totals["tp"] / max(1, totals["tp"] + totals["fp"])
    recall = totals["tp"] / max(1, totals["tp"] + totals["miss"])
    console.print(
        f"precision {precision:.2f}, recall {recall:.2f} "
        f"({totals['tp']} found, {totals['fp']} false alarms, {totals['miss']} missed); "
        f"annotated frames in {annotated} (green: truth, red: detections)"
    )
    summary = {"precision": precision, "recall": recall, **totals, "images": records}
    (out / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")


def draw(frame: np.ndarray, found: list[Detection], truth: list[tuple[int, tuple[float, float, float, float]]]) -> None:
    """Truth in green, detections in red with label and score."""
    for _, box in truth:
        x1, y1, x2, y2 = (int(v) for v in box)
        cv2.rectangle(frame, (x1, y1), (x2, y2), (0, 200, 0), 2)
    for det in found:
        x1, y1, x2, y2 = (int(v) for v in det.box)
        cv2.rectangle(frame, (x1, y1), (x2, y2), (0, 0, 255), 1)
        cv2.putText(frame, f"{det.label} {det.score:.2f}", (x1, max(12, y1 - 3)), 0, 0.45, (0, 0, 255), 1)
