"""Letterbox geometry (ultralytics' LetterBox(auto=False, center=True)) and its inverse mapping."""

from __future__ import annotations

import numpy as np
import pytest

from common.detect.letterbox import (
    PAD_VALUE,
    Letterbox,
    boxes_to_frame,
    boxes_to_input,
    letterbox,
    letterbox_into,
    letterbox_params,
    stretch_into,
    stretch_params,
    to_tensor,
)

INPUT_HW = (320, 320)


@pytest.mark.parametrize(
    ("frame_hw", "expected"),
    [
        # landscape: scaled by 0.5, grey bars above and below
        ((480, 640), Letterbox(0.5, (320, 240), 0, 40, 0, 40)),
        # portrait: grey bars left and right
        ((640, 480), Letterbox(0.5, (240, 320), 40, 0, 40, 0)),
        # small frames are scaled up (ultralytics predicts with scaleup=True)
        ((50, 80), Letterbox(4.0, (320, 200), 0, 60, 0, 60)),
        # odd padding: round(109.5 - 0.1) above, round(109.5 + 0.1) below
        ((101, 320), Letterbox(1.0, (320, 101), 0, 109, 0, 110)),
        ((320, 101), Letterbox(1.0, (101, 320), 109, 0, 110, 0)),
    ],
)
def test_letterbox_params_follow_ultralytics_rounding(frame_hw, expected):
    assert letterbox_params(frame_hw, INPUT_HW) == expected


def test_letterbox_fills_bars_with_grey_and_keeps_the_picture_inside():
    frame = np.zeros((480, 640, 3), dtype=np.uint8)

    image, params = letterbox(frame, INPUT_HW)

    assert image.shape == (320, 320, 3)
    assert image.dtype == np.uint8
    assert (image[: params.pad_top] == PAD_VALUE).all()
    assert (image[320 - params.pad_bottom :] == PAD_VALUE).all()
    assert (image[params.pad_top : 320 - params.pad_bottom] == 0).all()


def test_letterbox_to_non_square_input_pads_the_short_side():
    frame = np.zeros((480, 480, 3), dtype=np.uint8)

    image, params = letterbox(frame, (256, 416))

    assert image.shape == (256, 416, 3)
    assert params.resized_wh == (256, 256)
    assert (params.pad_left, params.pad_right) == (80, 80)


def test_to_tensor_is_rgb_nchw_float_in_unit_range():
    blue_bgr = np.zeros((480, 640, 3), dtype=np.uint8)
    blue_bgr[..., 0] = 255
    image, _ = letterbox(blue_bgr, INPUT_HW)

    tensor = to_tensor([image, image])

    assert tensor.shape == (2, 3, 320, 320)
    assert tensor.dtype == np.float32
    assert tensor.flags.c_contiguous
    red, green, blue = tensor[0, :, 160, 160]
    assert (red, green, blue) == (0.0, 0.0, 1.0)
    assert tensor[0, 0, 0, 0] == pytest.approx(PAD_VALUE / 255)


@pytest.mark.parametrize("frame_hw", [(480, 640), (640, 480), (101, 333), (333, 101), (50, 80), (1080, 1920)])
def test_boxes_round_trip_between_frame_and_input(frame_hw):
    height, width = frame_hw
    params = letterbox_params(frame_hw, INPUT_HW)
    boxes = np.array([[0, 0, width, height], [width * 0.1, height * 0.2, width * 0.7, height * 0.9]], dtype=np.float32)

    in_input = boxes_to_input(boxes, params, frame_hw)
    back = boxes_to_frame(in_input, params, frame_hw)

    np.testing.assert_allclose(back, boxes, atol=1e-3)
    # the whole frame maps onto the picture area of the letterboxed input
    np.testing.assert_allclose(
        in_input[0],
        [
            params.pad_left,
            params.pad_top,
            params.pad_left + params.resized_wh[0],
            params.pad_top + params.resized_wh[1],
        ],
        atol=1e-3,
    )


def test_boxes_to_frame_clips_to_the_frame():
    params = letterbox_params((480, 640), INPUT_HW)
    # a box reaching into the grey bars and past the right edge
    boxes = np.array([[-10, 10, 330, 310]], dtype=np.float32)

    mapped = boxes_to_frame(boxes, params, (480, 640))

    np.testing.assert_allclose(mapped, [[0, 0, 640, 480]])


def test_max_ratio_keeps_a_crop_at_its_frame_scale_centred_in_grey():
    # A 100x50 crop that would be blown up 3.2x is kept at 0.5x: 50x25, centred.
    assert letterbox_params((50, 100), INPUT_HW, max_ratio=0.5) == Letterbox(0.5, (50, 25), 135, 147, 135, 148)
    # A cap above the fitting ratio changes nothing.
    assert letterbox_params((480, 640), INPUT_HW, max_ratio=2.0) == letterbox_params((480, 640), INPUT_HW)


def test_max_ratio_boxes_map_back_to_the_crop():
    frame = np.full((50, 100, 3), 200, dtype=np.uint8)
    out = np.empty((3, *INPUT_HW), dtype=np.float32)

    params = letterbox_into(frame, out, max_ratio=0.5)

    np.testing.assert_allclose(out[:, 0, 0], PAD_VALUE / 255, rtol=1e-6)
    np.testing.assert_allclose(out[:, 160, 160], 200 / 255, rtol=1e-6)
    box = np.array([[135, 147, 185, 172]], dtype=np.float32)  # the whole resized crop
    np.testing.assert_allclose(boxes_to_frame(box, params, (50, 100)), [[0, 0, 100, 50]], atol=1e-4)


def test_stretch_fills_the_whole_input_and_maps_back_per_axis():
    frame = np.full((300, 900, 3), 80, dtype=np.uint8)
    out = np.zeros((3, *INPUT_HW), dtype=np.float32)

    params = stretch_into(frame, out)

    assert params == stretch_params((300, 900), INPUT_HW)
    assert (params.resized_wh, params.pad_left, params.pad_top) == ((320, 320), 0, 0)
    np.testing.assert_allclose(out, 80 / 255, rtol=1e-6)  # no grey border anywhere
    box = np.array([[160, 160, 320, 320]], dtype=np.float32)
    np.testing.assert_allclose(boxes_to_frame(box, params, (300, 900)), [[450, 150, 900, 300]], atol=1e-3)
