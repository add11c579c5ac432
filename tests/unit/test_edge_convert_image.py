"""edge/convert.py: the JPEG a sample carries, as a crop around the detections or the whole frame."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from common.detect import Detection
from edge.convert import crop_box, encode_sample_image


def frame(width: int = 320, height: int = 240) -> NDArray[np.uint8]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


def det(x1: float, y1: float, x2: float, y2: float, label: str = "person") -> Detection:
    return Detection(box=(x1, y1, x2, y2), score=0.5, class_id=0, label=label)


def decoded_shape(jpeg: bytes) -> tuple[int, ...]:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return tuple(image.shape)


def test_crop_is_the_union_of_boxes_padded_by_a_quarter() -> None:
    # Union (100, 80)-(180, 160): 80 x 80, padded by 20 on each side.
    boxes = [det(100, 80, 140, 120), det(150, 130, 180, 160, "cat")]
    jpeg, crop = encode_sample_image(frame(), boxes, "crop", 80)
    assert crop == (80, 60, 200, 180)
    assert decoded_shape(jpeg) == (120, 120, 3)


def test_crop_is_clipped_to_the_frame() -> None:
    assert crop_box((320, 240), [det(0.5, 200, 40.5, 240)]) == (0, 190, 51, 240)


def test_crop_mode_without_detections_sends_the_whole_frame() -> None:
    jpeg, crop = encode_sample_image(frame(), [], "crop", 80)
    assert crop is None
    assert decoded_shape(jpeg) == (240, 320, 3)


def test_crop_covering_the_whole_frame_is_reported_as_the_whole_frame() -> None:
    assert crop_box((320, 240), [det(10, 10, 310, 230)]) is None


def test_full_frame_mode_ignores_the_detections() -> None:
    jpeg, crop = encode_sample_image(frame(), [det(100, 80, 140, 120)], "full_frame", 80)
    assert crop is None
    assert decoded_shape(jpeg) == (240, 320, 3)


def test_lower_jpeg_quality_gives_fewer_bytes() -> None:
    image = frame()
    small, _ = encode_sample_image(image, [], "full_frame", 20)
    large, _ = encode_sample_image(image, [], "full_frame", 95)
    assert len(small) < len(large)


def test_a_motion_sample_in_crop_mode_carries_the_changed_region() -> None:
    # A 20 x 20 change is padded to the minimum side of 96 around its centre.
    jpeg, crop = encode_sample_image(frame(), [], "crop", 80, motion_box=(200, 100, 220, 120))
    assert crop == (162, 62, 258, 158)
    assert decoded_shape(jpeg) == (96, 96, 3)


def test_a_motion_region_over_most_of_the_frame_sends_the_whole_frame() -> None:
    _, crop = encode_sample_image(frame(), [], "crop", 80, motion_box=(5, 5, 300, 230))
    assert crop is None


def test_detections_win_over_the_motion_region() -> None:
    _, crop = encode_sample_image(frame(), [det(100, 80, 140, 120)], "crop", 80, motion_box=(0, 0, 20, 20))
    assert crop == (90, 70, 150, 130)
