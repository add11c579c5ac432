"""What the glm backend shows the model of a sample: the edge's claims on a whole frame, a crop as it came."""

from __future__ import annotations

import numpy as np

from cloud.backends.glm import focused_image
from cloud.convert import CloudDetection, CropBox, SampleInput
from common.boxes import padded_union
from common.detect import Detection
from edge.convert import crop_box


def frame(width: int, height: int) -> np.ndarray:
    """A frame whose every pixel tells where it is: (x % 256, y % 256, x // 256)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs % 256, ys % 256, xs // 256], axis=-1).astype(np.uint8)


def sample(image: np.ndarray, boxes: list[tuple[float, float, float, float]], **fields: object) -> SampleInput:
    values: dict[str, object] = {
        "sample_id": "s",
        "edge_id": "e",
        "camera_id": "c",
        "frame_seq": 0,
        "captured_at": 0.0,
        "image": image,
        "crop": None,
        "frame_size": (image.shape[1], image.shape[0]),
        "detections": tuple(CloudDetection("person", 0, 0.5, box) for box in boxes),
        "mined_reason": "uncertainty_band",
        "priority": 0.5,
        "trace_id": "",
    }
    values.update(fields)
    return SampleInput(**values)  # type: ignore[arg-type]


def test_a_whole_frame_is_cut_to_the_padded_union_of_the_claims() -> None:
    image = frame(640, 480)
    shown = focused_image(sample(image, [(100, 200, 140, 280), (150, 210, 180, 300)]))
    # union (100, 200)-(180, 300), padded by a quarter: 20 px each side across, 25 px up and down
    assert shown.shape[:2] == (150, 120)
    assert tuple(shown[0, 0]) == (80, 175, 0)  # the top-left pixel is the frame's (80, 175)
    assert np.array_equal(shown, image[175:325, 80:200])


def test_the_edge_crops_and_the_cloud_focuses_by_one_rule() -> None:
    boxes = [(10.5, 20.25, 300.0, 200.0), (5.0, 400.0, 50.0, 470.0)]
    region = crop_box((640, 480), [Detection(box, 0.5, 0, "person") for box in boxes])
    assert region == padded_union((640, 480), boxes)
    assert region is not None
    x1, y1, x2, y2 = region
    image = frame(640, 480)
    assert np.array_equal(focused_image(sample(image, boxes)), image[y1:y2, x1:x2])


def test_a_frame_sent_smaller_than_it_was_captured_is_cut_at_its_own_scale() -> None:
    image = frame(320, 240)  # a 640x480 frame, sent at half size
    shown = focused_image(sample(image, [(100, 200, 140, 280)], frame_size=(640, 480)))
    # the box at half scale is (50, 100)-(70, 140); padded, (45, 90)-(75, 150)
    assert np.array_equal(shown, image[90:150, 45:75])


def test_a_crop_motion_or_whole_frame_claim_is_shown_whole() -> None:
    image = frame(200, 100)
    crop = sample(image, [(10, 10, 20, 20)], crop=CropBox(100, 100, 300, 200), frame_size=(640, 480))
    motion = sample(image, [], mined_reason="motion_without_detection")
    everything = sample(image, [(0, 0, 200, 100)])
    for whole in (crop, motion, everything):
        assert focused_image(whole) is image
