"""The project's decoder against ultralytics' own predictions from the same exported ONNX file.

The fixture was recorded by `make train` (sim/train/train.py) with ultralytics in its own
environment; here only ONNX Runtime and our code run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.detect import Detector, DetectorConfig, decode_image
from sim.eval.metrics import iou_matrix

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ultralytics_edge"
RECORD = json.loads((FIXTURES / "predictions.json").read_text())


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(
        DetectorConfig(
            model_path=ROOT / "sim" / "models" / RECORD["model"],
            conf_threshold=RECORD["conf"],
            iou_threshold=RECORD["iou"],
        )
    )


def test_fixture_covers_twenty_images_with_detections() -> None:
    assert len(RECORD["images"]) == 20
    assert sum(len(image["detections"]) for image in RECORD["images"]) >= 20


@pytest.mark.parametrize("record", RECORD["images"], ids=lambda r: r["image"])
def test_decoder_matches_ultralytics(detector: Detector, record: dict[str, object]) -> None:
    frame = decode_image((FIXTURES / str(record["image"])).read_bytes(), str(record["image"]))
    ours = detector.detect(frame)
    theirs = record["detections"]
    assert isinstance(theirs, list)
    for det in theirs:
        same_class = [d for d in ours if d.class_id == det["class_id"]]
        assert same_class, f"{record['image']}: ultralytics found a {det['label']}, we found none"
        ious = iou_matrix(
            np.array([det["box"]], dtype=np.float64), np.array([d.box for d in same_class], dtype=np.float64)
        )
        best = int(np.argmax(ious[0]))
        assert ious[0, best] >= 0.9, f"{record['image']}: {det['label']} box IoU {ious[0, best]:.3f}"
        assert same_class[best].score == pytest.approx(det["score"], abs=0.02)
    # Nothing extra either: scores near the threshold may flip, nothing else.
    extra = [d for d in ours if d.score > RECORD["conf"] + 0.02]
    assert len(extra) <= len(theirs)
