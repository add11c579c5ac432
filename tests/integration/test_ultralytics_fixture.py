"""The project's YOLO runtime against ultralytics' own predictions from the same exported ONNX file.

The fixture was recorded by `make train` (sim/train/train.py) with ultralytics in its own
environment; here only ONNX Runtime and our code run. Both users of the runtime are checked: the
edge's Detector frame by frame, and the cloud's `onnx` backend on the whole fixture in one batch
(JPEG samples as an edge sends them, boxes back in frame pixels).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from cloud.backends import OnnxBackend, OnnxBackendConfig
from cloud.convert import sample_from_pb
from common.detect import Detector, DetectorConfig, decode_image
from protos import sample_pb2
from sim.eval.metrics import iou_matrix

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ultralytics_edge"
RECORD = json.loads((FIXTURES / "predictions.json").read_text())
MODEL = ROOT / "sim" / "models" / RECORD["model"]
Found = tuple[int, float, Sequence[float]]  # class id, score, xyxy box in frame pixels


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(DetectorConfig(model_path=MODEL, conf_threshold=RECORD["conf"], iou_threshold=RECORD["iou"]))


def assert_matches_ultralytics(record: dict[str, object], ours: Sequence[Found]) -> None:
    """Every ultralytics detection has ours of its class at IoU >= 0.9 and its score; nothing extra."""
    theirs = record["detections"]
    assert isinstance(theirs, list)
    for det in theirs:
        same_class = [(score, box) for class_id, score, box in ours if class_id == det["class_id"]]
        assert same_class, f"{record['image']}: ultralytics found a {det['label']}, we found none"
        ious = iou_matrix(
            np.array([det["box"]], dtype=np.float64), np.array([box for _, box in same_class], dtype=np.float64)
        )
        best = int(np.argmax(ious[0]))
        assert ious[0, best] >= 0.9, f"{record['image']}: {det['label']} box IoU {ious[0, best]:.3f}"
        assert same_class[best][0] == pytest.approx(det["score"], abs=0.02)
    # Nothing extra either: scores near the threshold may flip, nothing else.
    extra = [score for _, score, _ in ours if score > RECORD["conf"] + 0.02]
    assert len(extra) <= len(theirs)


def test_fixture_covers_twenty_images_with_detections() -> None:
    assert len(RECORD["images"]) == 20
    assert sum(len(image["detections"]) for image in RECORD["images"]) >= 20


@pytest.mark.parametrize("record", RECORD["images"], ids=lambda r: r["image"])
def test_decoder_matches_ultralytics(detector: Detector, record: dict[str, object]) -> None:
    frame = decode_image((FIXTURES / str(record["image"])).read_bytes(), str(record["image"]))
    ours = detector.detect(frame)
    assert_matches_ultralytics(record, [(d.class_id, d.score, d.box) for d in ours])


def _sample(record: dict[str, object]):
    """The fixture image as an edge sends it: the JPEG file's bytes, a full frame, nothing detected."""
    pb = sample_pb2.Sample(
        sample_id=str(record["image"]),
        edge_id="edge-1",
        camera_id="cam",
        captured_at=Timestamp(seconds=1_767_225_600),
        image=sample_pb2.SampleImage(jpeg=(FIXTURES / str(record["image"])).read_bytes()),
        mined_reason=sample_pb2.MINED_REASON_MOTION_WITHOUT_DETECTION,
    )
    return sample_from_pb(pb)


async def test_cloud_onnx_backend_matches_ultralytics_on_the_fixture_in_one_batch() -> None:
    config = OnnxBackendConfig(
        model_path=MODEL, providers=["cpu"], conf_threshold=RECORD["conf"], iou_threshold=RECORD["iou"]
    )
    backend = OnnxBackend(config)
    await backend.start()
    try:
        results = await backend.infer([_sample(record) for record in RECORD["images"]])
    finally:
        await backend.close()

    assert len(results) == len(RECORD["images"])
    for record, result in zip(RECORD["images"], results, strict=True):
        assert_matches_ultralytics(record, [(d.class_id, d.score, d.box) for d in result.detections])
        assert result.decision == ("confirmed" if record["detections"] else "rejected"), record["image"]
