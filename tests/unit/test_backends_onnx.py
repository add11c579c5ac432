"""The onnx backend on a real YOLO model and real world frames: it confirms what is there, rejects what is not.

sim/models/reference.onnx may not exist yet, so these run the edge model (the backend takes any
ultralytics YOLO export through model_path).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from cloud.backends import BackendStartError, OnnxBackend, OnnxBackendConfig
from cloud.convert import SampleInput, sample_from_pb
from common.boxes import iou
from protos import sample_pb2
from sim.world.dataset import DatasetSpec, render_dataset_image
from tests.helpers.onnx_models import e2e_output, save_yolo_model, v8_output

MODEL = Path(__file__).resolve().parents[2] / "sim" / "models" / "edge.onnx"
# Test images of DatasetSpec(seed=0): 4 holds one person, 0 one cup, 7 one motorcycle, 2 nothing.
PERSON, CUP, MOTORCYCLE, EMPTY = 4, 0, 7, 2
BACKGROUND_BOX = (20.0, 20.0, 90.0, 140.0)  # top-left corner of image 4: sky, nothing else


def scene(index):
    return render_dataset_image(DatasetSpec(seed=0), "test", index)


def sample(index, detections=(), crop=None) -> SampleInput:
    image = scene(index).image
    height, width = image.shape[:2]
    pb = sample_pb2.Sample(
        sample_id=f"test-{index}",
        edge_id="edge-1",
        camera_id="cam",
        captured_at=Timestamp(seconds=1_767_225_600),
        image=sample_pb2.SampleImage(frame_width=width, frame_height=height),
        detections=[
            sample_pb2.Detection(label=label, score=0.4, box=sample_pb2.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]))
            for label, b in detections
        ],
        mined_reason=sample_pb2.MINED_REASON_UNCERTAINTY_BAND,
    )
    if crop is not None:
        x1, y1, x2, y2 = crop
        image = image[y1:y2, x1:x2]
        pb.image.crop.CopyFrom(sample_pb2.CropBox(x1=x1, y1=y1, x2=x2, y2=y2))
    pb.image.jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    return sample_from_pb(pb)


def truth(index):
    (obj,) = scene(index).objects
    return obj.label, obj.box


@pytest.fixture
async def backend():
    backend = OnnxBackend(OnnxBackendConfig(model_path=MODEL, providers=["cpu"], intra_op_threads=1))
    await backend.start()
    yield backend
    await backend.close()


async def test_backend_confirms_an_edge_detection_of_a_real_object(backend):
    label, box = truth(PERSON)
    edge_box = (box[0] + 8, box[1] - 6, box[2] + 8, box[3] - 6)  # the edge's box is a little off

    (result,) = await backend.infer([sample(PERSON, [(label, edge_box)])])

    assert result.decision == "confirmed"
    found = [d for d in result.detections if d.label == label]
    assert found
    assert iou(found[0].box, box) > 0.7
    assert result.confidence == found[0].score


async def test_backend_rejects_an_edge_detection_on_empty_background(backend):
    (result,) = await backend.infer([sample(PERSON, [("person", BACKGROUND_BOX)])])

    assert result.decision == "rejected"
    assert "no person found" in result.text


async def test_backend_maps_crop_detections_into_the_frame(backend):
    label, (x1, y1, x2, y2) = truth(PERSON)
    around = (int(x1) - 30, int(y1) - 30, int(x2) + 30, int(y2) + 30)
    background = (0, 0, 160, 160)

    inside, outside = await backend.infer(
        [
            sample(PERSON, [(label, (x1, y1, x2, y2))], crop=around),
            sample(PERSON, [(label, BACKGROUND_BOX)], crop=background),
        ]
    )

    assert inside.decision == "confirmed"
    (found,) = [d for d in inside.detections if d.label == label]
    assert iou(found.box, (x1, y1, x2, y2)) > 0.7  # in frame pixels, not crop pixels
    assert outside.decision == "rejected"


async def test_batch_results_come_back_in_order_one_per_sample(backend):
    batch = [
        sample(CUP, [truth(CUP)]),
        sample(MOTORCYCLE, [("cat", truth(MOTORCYCLE)[1])]),  # a motorcycle the edge took for a cat
        sample(EMPTY),  # motion without detection, and nothing there
        sample(MOTORCYCLE),  # motion without detection, and something there
    ]

    results = await backend.infer(batch)

    assert [r.decision for r in results] == ["confirmed", "rejected", "rejected", "confirmed"]


async def test_backend_logs_the_provider_it_picked_and_versions_the_model(caplog):
    backend = OnnxBackend(OnnxBackendConfig(model_path=MODEL, providers=["cuda", "cpu"]))

    with caplog.at_level(logging.INFO, logger="cloud.backends.onnx"):
        await backend.start()
        await backend.start()  # again: nothing reloads
    await backend.close()

    (record,) = [r for r in caplog.records if r.name == "cloud.backends.onnx"]
    assert "CPUExecutionProvider" in record.getMessage()
    assert "asked ['cuda', 'cpu']" in record.getMessage()
    # The fallback from CUDA is said once, as a warning, by the detector runtime.
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "falling back to CPUExecutionProvider" in warning.getMessage()
    assert backend.model_name == "edge"
    assert backend.model_version.startswith("sha256:")


async def test_missing_model_fails_start_naming_the_file(tmp_path):
    backend = OnnxBackend(OnnxBackendConfig(model_path=tmp_path / "reference.onnx"))

    with pytest.raises(BackendStartError, match=r"reference\.onnx: model file not found"):
        await backend.start()


async def test_a_file_that_is_not_onnx_fails_start_naming_the_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    backend = OnnxBackend(OnnxBackendConfig(model_path=path))

    with pytest.raises(BackendStartError, match=r"broken\.onnx: not a loadable ONNX model"):
        await backend.start()


async def test_a_segmentation_model_fails_start_saying_what_it_is(tmp_path):
    # No task in its metadata: its second output (mask prototypes) gives it away.
    path = save_yolo_model(
        tmp_path / "seg.onnx",
        v8_output([], nc=3, anchors=8),
        {0: "person", 1: "cat", 2: "dog"},
        extra_metadata={"task": None},
        extra_outputs={"output1": np.zeros((1, 32, 80, 80), np.float32)},
    )
    backend = OnnxBackend(OnnxBackendConfig(model_path=path, providers=["cpu"]))

    with pytest.raises(BackendStartError, match=r"seg\.onnx: the model has 2 outputs.*only detection models"):
        await backend.start()


async def test_a_dynamic_nms_export_judges_every_sample_of_a_larger_batch(tmp_path):
    # Exported with nms=True, dynamic=True, batch=1: its NMS loop covers one image per run.
    rows = [(110, 130, 210, 190, 0.8, 2)] + [(0, 0, 0, 0, 0.0, 0)] * 7
    path = save_yolo_model(
        tmp_path / "nms.onnx",
        e2e_output(rows),
        {0: "person", 1: "cat", 2: "dog"},
        batch="batch",
        nms=True,
        export_batch=1,
        rows_kept=1,
    )
    backend = OnnxBackend(OnnxBackendConfig(model_path=path, providers=["cpu"]))
    await backend.start()
    try:
        results = await backend.infer([sample(EMPTY) for _ in range(4)])
    finally:
        await backend.close()

    assert [r.decision for r in results] == ["confirmed"] * 4
    assert [[d.label for d in r.detections] for r in results] == [["dog"]] * 4
