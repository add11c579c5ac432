"""Exports this project never trained, as a new user brings them: NMS inside with a dynamic batch,
RT-DETR, and models of other tasks that must be refused by what they output, not only by metadata."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from common.detect import Detector, DetectorConfig, DetectorError
from tests.helpers.onnx_models import Candidate, e2e_output, rtdetr_output, save_yolo_model, v8_output

NAMES = {0: "person", 1: "cat", 2: "dog"}
# Bright frames (mean near 1) and dark ones (mean near 0, grey bars included) alternate.
FRAMES = [np.full((480, 640, 3), 250 if index % 2 == 0 else 0, np.uint8) for index in range(5)]


def detector(path, **config):
    return Detector(DetectorConfig(model_path=path, **config))


def _nms_export(tmp_path, export_batch):
    """A dynamic nms=True export traced at `export_batch`: a dog always, a person on bright frames."""
    output = e2e_output([(110, 130, 210, 190, 0.8, 2), (20, 20, 60, 60, 0.1, 0)] + [(0, 0, 0, 0, 0.0, 0)] * 6)
    gain = np.zeros_like(output)
    gain[0, 1, 4] = 0.8  # the person's score follows the brightness
    return save_yolo_model(
        tmp_path / f"nms_b{export_batch}.onnx",
        output,
        NAMES,
        batch="batch",
        gain=gain,
        nms=True,
        export_batch=export_batch,
        rows_kept=export_batch,
        extra_metadata={"end2end": "False", "head": "Detect"},
    )


@pytest.mark.parametrize("export_batch", [1, 2])
def test_dynamic_nms_export_finds_objects_in_every_frame_of_a_larger_batch(tmp_path, export_batch):
    path = _nms_export(tmp_path, export_batch)
    # The model itself loses every frame past its export batch: the trap this guards against.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = session.run(None, {"images": np.ones((5, 3, 320, 320), np.float32)})[0]
    assert not raw[export_batch:].any()
    det = detector(path)

    found = det.detect_batch(FRAMES)

    assert det.layout == "e2e"
    assert det.frames_per_run == export_batch
    assert [sorted(d.label for d in frame) for frame in found] == [
        ["dog", "person"],
        ["dog"],
        ["dog", "person"],
        ["dog"],
        ["dog", "person"],
    ]
    assert found == [det.detect(frame) for frame in FRAMES]


def test_dynamic_export_without_nms_takes_any_batch_in_one_run(tmp_path):
    output = v8_output([Candidate(160, 160, 100, 60, 1, 0.9)], nc=3, anchors=8)
    det = detector(save_yolo_model(tmp_path / "v8.onnx", output, NAMES, batch="batch"))

    assert det.frames_per_run is None
    assert [len(frame) for frame in det.detect_batch(FRAMES)] == [1] * 5


def test_fixed_batch_end_to_end_export_pads_the_last_chunk(tmp_path):
    output = e2e_output([(110, 130, 210, 190, 0.8, 2)] + [(0, 0, 0, 0, 0.0, 0)] * 7)
    det = detector(save_yolo_model(tmp_path / "e2e_b3.onnx", output, NAMES, batch=3, end2end=True))

    found = det.detect_batch(FRAMES)

    assert det.frames_per_run == 3
    assert [[d.label for d in frame] for frame in found] == [["dog"]] * 5


def _rtdetr(tmp_path, names, metadata):
    # A cat at the centre, a quarter of the input wide and an eighth high; the rest near nothing.
    output = rtdetr_output([(0.5, 0.5, 0.25, 0.125, 1, 0.8), (0.2, 0.2, 0.1, 0.1, 0, 0.2)], nc=len(names))
    return save_yolo_model(tmp_path / "rtdetr-l.onnx", output, names, batch="batch", extra_metadata=metadata)


@pytest.mark.parametrize(
    "metadata",
    [{"head": "RTDETRDecoder", "end2end": "False"}, {"description": "Ultralytics rtdetr-l model trained on coco.yaml"}],
    ids=["head", "description"],
)
@pytest.mark.parametrize("names", [NAMES, {0: "person", 1: "cat"}], ids=["nc3", "nc2-looks-end-to-end"])
def test_rtdetr_export_is_decoded_from_normalised_centres_on_a_stretched_frame(tmp_path, names, metadata):
    det = detector(_rtdetr(tmp_path, names, metadata))

    found = det.detect_batch([FRAMES[0], np.zeros((300, 900, 3), np.uint8)])

    assert det.layout == "rtdetr"
    # Stretched like ultralytics' RTDETRPredictor: normalised boxes scale with each frame's own sides.
    assert [[d.label for d in frame] for frame in found] == [["cat"], ["cat"]]
    np.testing.assert_allclose(found[0][0].box, (240, 210, 400, 270), atol=1.0)
    np.testing.assert_allclose(found[1][0].box, (337.5, 131.25, 562.5, 168.75), atol=1.0)
    assert found[0][0].score == pytest.approx(0.8)


def test_rtdetr_like_output_without_metadata_saying_so_is_refused(tmp_path):
    path = _rtdetr(tmp_path, NAMES, {"end2end": None})

    with pytest.raises(DetectorError, match=r"rtdetr-l\.onnx: output shape \[1, 300, 7\] looks like RT-DETR"):
        detector(path)


def test_300_by_6_output_is_refused_when_it_could_be_either_rtdetr_or_end_to_end(tmp_path):
    path = _rtdetr(tmp_path, {0: "person", 1: "cat"}, {})

    with pytest.raises(DetectorError, match=r"rtdetr-l\.onnx: output shape \[1, 300, 6\] fits both") as caught:
        detector(path)

    assert "RT-DETR" in str(caught.value)


NO_TASK = {"task": None}


@pytest.mark.parametrize(
    ("name", "output", "nc", "extra", "expected"),
    [
        ("cls", np.zeros((1, 3), np.float32), 3, {}, r"\[1, 3\].*classification export"),
        ("obb", np.zeros((1, 4 + 3 + 1, 64), np.float32), 3, {}, r"\[1, 8, 64\].*OBB export"),
        ("seg", np.zeros((1, 4 + 3 + 32, 64), np.float32), 3, {}, r"mask coefficients: a segmentation export"),
        ("pose", np.zeros((1, 4 + 1 + 17 * 3, 64), np.float32), 1, {}, r"\[1, 56, 64\].*17 x 3.*pose export"),
        ("pose-e2e", np.zeros((1, 300, 6 + 17 * 3), np.float32), 1, {"end2end": "True"}, r"end-to-end.*pose export"),
    ],
)
def test_other_tasks_are_refused_by_their_output_when_the_metadata_has_no_task(
    tmp_path, name, output, nc, extra, expected
):
    names = {i: f"class{i}" for i in range(nc)}
    path = save_yolo_model(tmp_path / f"{name}.onnx", output, names, extra_metadata={**NO_TASK, **extra})

    with pytest.raises(DetectorError, match=rf"{name}\.onnx: .*{expected}") as caught:
        detector(path)

    assert "only detection models are supported" in str(caught.value)


def test_segmentation_export_is_refused_by_its_second_output(tmp_path):
    # Even when its first output happened to fit the v8 layout (no task, no head in the metadata).
    protos = np.zeros((1, 32, 80, 80), np.float32)
    path = save_yolo_model(
        tmp_path / "seg.onnx",
        v8_output([], nc=3, anchors=8),
        NAMES,
        extra_metadata=NO_TASK,
        extra_outputs={"output1": protos},
    )

    with pytest.raises(
        DetectorError, match=r"seg\.onnx: the model has 2 outputs: output0 \[1, 7, 8\], output1 \[1, 32, 80, 80\]"
    ):
        detector(path)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"head": "Segment"}, r"a Segment head, a 'segment' model"),
        ({"head": "Pose26"}, r"a Pose26 head, a 'pose' model"),
        ({"kpt_shape": "[17, 3]"}, r"kpt_shape \[17, 3\], a pose model"),
    ],
)
def test_metadata_of_another_task_beyond_the_task_key_is_refused(tmp_path, extra, expected):
    path = save_yolo_model(tmp_path / "other.onnx", v8_output([], nc=3, anchors=8), NAMES, extra_metadata=extra)

    with pytest.raises(DetectorError, match=rf"other\.onnx: the metadata (names|has) .*{expected}"):
        detector(path)
