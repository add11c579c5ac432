"""Letterbox preprocessing, the same geometry as ultralytics' ``LetterBox(auto=False, center=True)``.

The detector must see frames exactly as the model saw them in training and validation, so this
module copies ultralytics' rounding (including the ``round(d - 0.1)`` / ``round(d + 0.1)`` split of
odd padding) rather than choosing its own. The inverse mapping uses the per-axis gain of the actual
resize, as ultralytics' ``scale_boxes`` does, so boxes land where the objects are.

RT-DETR is predicted by ultralytics with ``LetterBox(scale_fill=True)`` instead: the frame is
stretched to the whole input, no border. ``stretch_params`` describes that resize with the same
``Letterbox`` record (zero padding, per-axis gains), so one inverse mapping serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

PAD_VALUE = 114  # ultralytics' grey border
_SCALE = np.float32(255.0)
_PAD_LEVEL = np.float32(PAD_VALUE) / _SCALE  # the border as the float tensor holds it


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How one frame was fitted into the model input: scale, resized size and padding in pixels."""

    ratio: float
    resized_wh: tuple[int, int]
    pad_left: int
    pad_top: int
    pad_right: int
    pad_bottom: int


def letterbox_params(frame_hw: tuple[int, int], input_hw: tuple[int, int], max_ratio: float | None = None) -> Letterbox:
    """Compute the letterbox of a ``frame_hw`` frame into an ``input_hw`` model input.

    ``max_ratio`` caps the resize ratio (a crop kept at the scale its whole frame would have);
    None fits the frame to the input, as ultralytics does.
    """
    height, width = frame_hw
    input_h, input_w = input_hw
    # No upscaling limit: ultralytics predicts with scaleup=True.
    ratio = min(input_h / height, input_w / width)
    if max_ratio is not None:
        ratio = min(ratio, max_ratio)
    # Python's round (banker's rounding) on purpose: it is what ultralytics uses.
    resized_w = max(round(width * ratio), 1)
    resized_h = max(round(height * ratio), 1)
    half_dw = (input_w - resized_w) / 2
    half_dh = (input_h - resized_h) / 2
    return Letterbox(
        ratio=ratio,
        resized_wh=(resized_w, resized_h),
        pad_left=round(half_dw - 0.1),
        pad_top=round(half_dh - 0.1),
        pad_right=round(half_dw + 0.1),
        pad_bottom=round(half_dh + 0.1),
    )


def stretch_params(frame_hw: tuple[int, int], input_hw: tuple[int, int]) -> Letterbox:
    """The resize of a ``frame_hw`` frame stretched to fill an ``input_hw`` input (RT-DETR's preprocessing)."""
    input_h, input_w = input_hw
    return Letterbox(
        ratio=min(input_h / frame_hw[0], input_w / frame_hw[1]),
        resized_wh=(input_w, input_h),
        pad_left=0,
        pad_top=0,
        pad_right=0,
        pad_bottom=0,
    )


def letterbox(frame: NDArray[np.uint8], input_hw: tuple[int, int]) -> tuple[NDArray[np.uint8], Letterbox]:
    """Resize a BGR frame keeping its aspect ratio and pad it with grey to ``input_hw``."""
    params = letterbox_params((frame.shape[0], frame.shape[1]), input_hw)
    resized = frame
    if (frame.shape[1], frame.shape[0]) != params.resized_wh:
        resized = np.asarray(cv2.resize(frame, params.resized_wh, interpolation=cv2.INTER_LINEAR), np.uint8)
    padded = cv2.copyMakeBorder(
        resized,
        params.pad_top,
        params.pad_bottom,
        params.pad_left,
        params.pad_right,
        cv2.BORDER_CONSTANT,
        value=(PAD_VALUE, PAD_VALUE, PAD_VALUE),
    )
    return np.asarray(padded, dtype=np.uint8), params


def to_tensor(images: Sequence[NDArray[np.uint8]]) -> NDArray[np.float32]:
    """Stack letterboxed BGR images into the model's NCHW float32 RGB tensor scaled to [0, 1]."""
    batch = np.stack(images)
    # One contiguous copy does BGR→RGB and HWC→CHW; ONNX Runtime wants C-contiguous inputs.
    tensor = np.ascontiguousarray(batch[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
    tensor /= 255.0
    return tensor


def letterbox_into(frame: NDArray[np.uint8], out: NDArray[np.float32], max_ratio: float | None = None) -> Letterbox:
    """Letterbox a BGR frame straight into one ``[3, H, W]`` image of the model's tensor.

    The values are those of ``to_tensor([letterbox(frame, (H, W))[0]])[0]`` (RGB, divided by 255 in
    float32), but the padded uint8 image, the stack and the strided transpose copy are skipped: each
    resized plane is divided into the inside of ``out`` and only the border bands are filled with grey.
    ``max_ratio`` is ``letterbox_params``'.
    """
    input_hw = (out.shape[1], out.shape[2])
    params = letterbox_params((frame.shape[0], frame.shape[1]), input_hw, max_ratio)
    return resize_into(frame, out, params)


def stretch_into(frame: NDArray[np.uint8], out: NDArray[np.float32]) -> Letterbox:
    """Stretch a BGR frame over one whole ``[3, H, W]`` image of the model's tensor (RT-DETR)."""
    params = stretch_params((frame.shape[0], frame.shape[1]), (out.shape[1], out.shape[2]))
    return resize_into(frame, out, params)


def resize_into(frame: NDArray[np.uint8], out: NDArray[np.float32], params: Letterbox) -> Letterbox:
    """Resize a BGR frame as ``params`` say into ``out`` (RGB, 0..1), the border grey; returns ``params``."""
    resized = frame
    if (frame.shape[1], frame.shape[0]) != params.resized_wh:
        resized = np.asarray(cv2.resize(frame, params.resized_wh, interpolation=cv2.INTER_LINEAR), np.uint8)
    width, height = params.resized_wh
    top, left = params.pad_top, params.pad_left
    out[:, :top] = _PAD_LEVEL
    out[:, top + height :] = _PAD_LEVEL
    out[:, top : top + height, :left] = _PAD_LEVEL
    out[:, top : top + height, left + width :] = _PAD_LEVEL
    inside = out[:, top : top + height, left : left + width]
    # cv2.split gives contiguous planes, which numpy converts and divides far faster than strided ones.
    for channel, plane in enumerate(reversed(cv2.split(resized))):  # BGR planes -> RGB channels
        np.divide(plane, _SCALE, out=inside[channel])
    return params


def _gains(params: Letterbox, frame_hw: tuple[int, int]) -> tuple[float, float]:
    """Per-axis scale of the actual resize; differs from ``ratio`` by the rounding of the sides."""
    return params.resized_wh[0] / frame_hw[1], params.resized_wh[1] / frame_hw[0]


def boxes_to_frame(boxes: NDArray[np.float32], params: Letterbox, frame_hw: tuple[int, int]) -> NDArray[np.float32]:
    """Map xyxy boxes from model-input pixels back to the original frame, clipped to it."""
    gain_x, gain_y = _gains(params, frame_hw)
    mapped = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    mapped[:, 0::2] = (mapped[:, 0::2] - params.pad_left) / gain_x
    mapped[:, 1::2] = (mapped[:, 1::2] - params.pad_top) / gain_y
    np.clip(mapped[:, 0::2], 0, frame_hw[1], out=mapped[:, 0::2])
    np.clip(mapped[:, 1::2], 0, frame_hw[0], out=mapped[:, 1::2])
    return mapped


def boxes_to_input(boxes: NDArray[np.float32], params: Letterbox, frame_hw: tuple[int, int]) -> NDArray[np.float32]:
    """Map xyxy boxes from the original frame into model-input pixels (inverse of ``boxes_to_frame``)."""
    gain_x, gain_y = _gains(params, frame_hw)
    mapped = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    mapped[:, 0::2] = mapped[:, 0::2] * gain_x + params.pad_left
    mapped[:, 1::2] = mapped[:, 1::2] * gain_y + params.pad_top
    return mapped
