"""A compact runner for ultralytics YOLO detection exports (ONNX, layout ``[B, 4 + nc, N]``).

The edge has its own, fuller detector; cloud and edge share only protos, so the cloud keeps this
small copy of the same geometry: ultralytics' letterbox (centred, grey 114 border, its rounding of
odd padding), a vectorised decode, class-aware NMS by OpenCV, and boxes mapped back with the per-axis
gain of the actual resize. Class names come from the model's ``names`` metadata. Blocking: run it in
an executor.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, cast

import cv2
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from cloud.backends.protocol import BackendStartError
from cloud.convert import CloudDetection

ProviderName = Literal["cuda", "cpu"]
EXECUTION_PROVIDERS: dict[ProviderName, str] = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
PAD_VALUE = 114
# Like ultralytics' max_nms: only the best candidates enter NMS, which bounds its cost.
MAX_NMS_CANDIDATES = 30_000


def pick_providers(requested: Sequence[ProviderName], available: Sequence[str]) -> list[str]:
    """Requested providers this onnxruntime build has, in order, with CPU always last as the fallback."""
    chosen = [EXECUTION_PROVIDERS[name] for name in requested if EXECUTION_PROVIDERS[name] in available]
    chosen = list(dict.fromkeys(chosen))
    if EXECUTION_PROVIDERS["cpu"] not in chosen:
        chosen.append(EXECUTION_PROVIDERS["cpu"])
    return chosen


class YoloOnnx:
    """One ONNX Runtime session of a YOLO detection model; `detect` gives boxes in image pixels."""

    def __init__(self, path: Path, providers: Sequence[ProviderName], intra_op_threads: int = 0) -> None:
        """Load the model (blocking); BackendStartError names the file when it does not fit."""
        self.path = path
        if not path.is_file():
            raise BackendStartError(f"{path}: model file not found (check model_path in the backend config)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        self.available_providers = list(ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=pick_providers(providers, self.available_providers)
            )
        except Exception as exc:  # ORT's exceptions share no base class below Exception
            raise BackendStartError(f"{path}: not a loadable ONNX model: {str(exc).strip()[:300]}") from exc
        self.provider = str(self._session.get_providers()[0])
        metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        self.names = _names(metadata, path)
        model_input = self._session.get_inputs()[0]
        self._input_name = str(model_input.name)
        self._half = model_input.type == "tensor(float16)"
        batch, _, height, width = model_input.shape
        self.input_hw = (
            (height, width) if isinstance(height, int) and isinstance(width, int) else _imgsz(metadata, path)
        )
        self.batch_size: int | None = batch if isinstance(batch, int) else None
        self._output_name = str(self._session.get_outputs()[0].name)
        # The declared output shape is often symbolic, so a blank batch shows the real one (and warms up).
        probe = self._run(np.zeros((self.batch_size or 1, 3, *self.input_hw), np.float32))
        if probe.ndim != 3 or probe.shape[1] != 4 + len(self.names):
            raise BackendStartError(
                f"{path}: output shape {list(probe.shape)} is not the YOLO layout [B, 4+nc, N] "
                f"with nc={len(self.names)} (end-to-end exports with NMS inside are not supported here)"
            )

    def detect(
        self,
        images: Sequence[NDArray[np.uint8]],
        conf_threshold: float,
        iou_threshold: float,
        max_det: int,
        scales: Sequence[float | None] | None = None,
    ) -> list[list[CloudDetection]]:
        """Detect objects in BGR images; boxes in each image's pixels, best score first.

        `scales` gives, per image, the resize ratio into the model input (None: fit the input, as
        ultralytics does); a larger ratio than fits is capped.
        """
        if not images:
            return []
        tensor = np.empty((len(images), 3, *self.input_hw), np.float32)
        ratios = scales if scales is not None else [None] * len(images)
        gains = [
            _letterbox_into(image, tensor[index], ratio)
            for index, (image, ratio) in enumerate(zip(images, ratios, strict=True))
        ]
        raw = self._run_batch(tensor)
        return [
            self._decode(pred, gain, (image.shape[0], image.shape[1]), conf_threshold, iou_threshold, max_det)
            for pred, gain, image in zip(raw, gains, images, strict=True)
        ]

    def _run_batch(self, tensor: NDArray[np.float32]) -> NDArray[np.float32]:
        """One run for a dynamic batch; chunks of the fixed batch size otherwise, the last one padded."""
        size = self.batch_size
        if size is None or tensor.shape[0] == size:
            return self._run(tensor)
        outputs = []
        for start in range(0, tensor.shape[0], size):
            chunk = tensor[start : start + size]
            count = chunk.shape[0]
            if count < size:
                chunk = np.concatenate([chunk, np.zeros((size - count, *chunk.shape[1:]), np.float32)])
            outputs.append(self._run(chunk)[:count])
        return np.concatenate(outputs)

    def _run(self, tensor: NDArray[np.float32]) -> NDArray[np.float32]:
        feed = tensor.astype(np.float16) if self._half else tensor
        (output,) = self._session.run([self._output_name], {self._input_name: feed})
        return np.asarray(output, dtype=np.float32)

    def _decode(
        self,
        pred: NDArray[np.float32],
        gain: tuple[float, float, int, int],
        image_hw: tuple[int, int],
        conf_threshold: float,
        iou_threshold: float,
        max_det: int,
    ) -> list[CloudDetection]:
        class_scores = pred[4:]
        scores = class_scores.max(axis=0)
        keep = scores >= conf_threshold
        if not keep.any():
            return []
        centre_wh = pred[:4, keep].T
        scores = scores[keep]
        class_ids = class_scores[:, keep].argmax(axis=0)
        xyxy = np.concatenate(
            [centre_wh[:, :2] - centre_wh[:, 2:] / 2, centre_wh[:, :2] + centre_wh[:, 2:] / 2], axis=1
        )
        order = _class_aware_nms(xyxy, scores, class_ids, iou_threshold)[:max_det]
        gain_x, gain_y, pad_left, pad_top = gain
        xyxy = xyxy[order]
        xyxy[:, 0::2] = np.clip((xyxy[:, 0::2] - pad_left) / gain_x, 0, image_hw[1])
        xyxy[:, 1::2] = np.clip((xyxy[:, 1::2] - pad_top) / gain_y, 0, image_hw[0])
        return [
            CloudDetection(self.names.get(int(c), str(int(c))), int(c), float(s), (x1, y1, x2, y2))
            for (x1, y1, x2, y2), s, c in zip(
                xyxy.tolist(), scores[order].tolist(), class_ids[order].tolist(), strict=True
            )
        ]


def _letterbox_into(
    image: NDArray[np.uint8], out: NDArray[np.float32], scale: float | None = None
) -> tuple[float, float, int, int]:
    """Letterbox a BGR image into one ``[3, H, W]`` RGB 0-1 slot; returns (gain_x, gain_y, pad_left, pad_top).

    The image is resized by `scale`, or by the ratio that fits it into the input (never more).
    """
    input_h, input_w = out.shape[1], out.shape[2]
    height, width = image.shape[:2]
    ratio = min(input_h / height, input_w / width)
    if scale is not None:
        ratio = min(ratio, scale)
    # Python's round (banker's) and the +-0.1 split of odd padding: what ultralytics does.
    resized_w, resized_h = max(round(width * ratio), 1), max(round(height * ratio), 1)
    half_dw, half_dh = (input_w - resized_w) / 2, (input_h - resized_h) / 2
    left, top = round(half_dw - 0.1), round(half_dh - 0.1)
    resized = image if (width, height) == (resized_w, resized_h) else cv2.resize(image, (resized_w, resized_h))
    out[:] = np.float32(PAD_VALUE) / np.float32(255.0)
    out[:, top : top + resized_h, left : left + resized_w] = resized[..., ::-1].transpose(2, 0, 1) / np.float32(255.0)
    return resized_w / width, resized_h / height, left, top


def _class_aware_nms(
    xyxy: NDArray[np.float32], scores: NDArray[np.float32], class_ids: NDArray[np.intp], iou_threshold: float
) -> NDArray[np.intp]:
    """Indices kept by per-class NMS, best first; each class is shifted to its own region of the plane.

    The shift is done here, not by cv2.dnn.NMSBoxesBatched, whose offset assumes non-negative
    coordinates; YOLO boxes at the border often start below 0.
    """
    corners = xyxy.astype(np.float64)
    span = float(corners.max() - corners.min()) + 1.0
    shifted = corners + (class_ids.astype(np.float64) * span)[:, None]
    shifted[:, 2:] -= shifted[:, :2]  # cv2 wants x, y, w, h
    kept = cv2.dnn.NMSBoxes(
        cast("Sequence[Sequence[float]]", shifted),
        cast("Sequence[float]", scores),
        0.0,
        iou_threshold,
        top_k=MAX_NMS_CANDIDATES,
    )
    return np.asarray(kept, dtype=np.intp).reshape(-1)


def _names(metadata: dict[str, str], path: Path) -> dict[int, str]:
    """Class names from ultralytics' ``names`` metadata (``str()`` of a dict, or of a list in old exports)."""
    if metadata.get("task", "detect") != "detect":
        raise BackendStartError(f"{path}: task is {metadata['task']!r} in the metadata; only 'detect' models work")
    try:
        value = ast.literal_eval(metadata["names"])
    except (KeyError, ValueError, SyntaxError) as exc:
        raise BackendStartError(
            f"{path}: no readable 'names' in the ONNX metadata; export it with ultralytics"
        ) from exc
    if isinstance(value, list):
        value = dict(enumerate(value))
    if not isinstance(value, dict) or not value:
        raise BackendStartError(
            f"{path}: metadata 'names' should map class ids to names, got {metadata['names'][:80]!r}"
        )
    return {int(key): str(name) for key, name in value.items()}


def _imgsz(metadata: dict[str, str], path: Path) -> tuple[int, int]:
    """Input size from ``imgsz`` metadata, for exports whose height and width are dynamic."""
    try:
        value = ast.literal_eval(metadata["imgsz"])
    except (KeyError, ValueError, SyntaxError) as exc:
        raise BackendStartError(f"{path}: input size is dynamic and the metadata has no readable 'imgsz'") from exc
    if isinstance(value, int):
        value = [value, value]
    return int(value[0]), int(value[1])
