"""Tiny ONNX models that behave like ultralytics YOLO exports, built with ``onnx.helper``.

Each model takes ``images [B, 3, H, W]`` and returns a designed tensor: a constant plus
``ReduceMean(images) * gain``. With a zero gain the output is exactly the constant (a known set of
candidate boxes); a non-zero gain makes chosen scores follow the frame's brightness, so frames in
one batch give different results. ``metadata_props`` are written the way ultralytics writes them:
``str(python_value)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUT_HW = (320, 320)


@dataclass(frozen=True)
class Candidate:
    """One v8-layout candidate in model-input pixels: centre, size, class and its score."""

    cx: float
    cy: float
    w: float
    h: float
    class_id: int
    score: float


def yolo_metadata(
    names: Mapping[int, str] | None,
    imgsz: tuple[int, int] = INPUT_HW,
    *,
    task: str = "detect",
    batch: int = 1,
    dynamic: bool = False,
    end2end: bool | None = None,
) -> dict[str, str]:
    """Metadata as ultralytics' exporter writes it (values are ``str()`` of Python values)."""
    metadata = {
        "description": "test model",
        "author": "Ultralytics",
        "stride": "32",
        "task": task,
        "batch": str(batch),
        "imgsz": str(list(imgsz)),
        "args": str({"batch": batch, "dynamic": dynamic, "nms": False}),
        "dynamic": str(dynamic),
    }
    if names is not None:
        metadata["names"] = str(dict(names))
    if end2end is not None:
        metadata["end2end"] = str(end2end)
    return metadata


def v8_output(candidates: Sequence[Candidate], nc: int, anchors: int | None = None) -> NDArray[np.float32]:
    """A ``[1, 4 + nc, N]`` output holding ``candidates``; unused anchors have all-zero scores."""
    count = anchors if anchors is not None else len(candidates)
    out = np.zeros((1, 4 + nc, count), dtype=np.float32)
    out[0, :4, :] = np.array([[10.0], [10.0], [4.0], [4.0]], dtype=np.float32)
    for index, cand in enumerate(candidates):
        out[0, :4, index] = (cand.cx, cand.cy, cand.w, cand.h)
        out[0, 4 + cand.class_id, index] = cand.score
    return out


def e2e_output(rows: Sequence[tuple[float, float, float, float, float, int]]) -> NDArray[np.float32]:
    """A ``[1, N, 6]`` end-to-end output: x1, y1, x2, y2, score, class id per row."""
    return np.array([list(row) for row in rows], dtype=np.float32).reshape(1, -1, 6)


def build_model(
    output: NDArray[np.float32],
    metadata: Mapping[str, str],
    *,
    batch: int | str = 1,
    input_hw: tuple[int | str, int | str] = INPUT_HW,
    gain: NDArray[np.float32] | None = None,
) -> onnx.ModelProto:
    """A model whose output is ``output + ReduceMean(images) * gain`` broadcast over the batch.

    ``output`` and ``gain`` have shape ``[1, ...]``; a string ``batch`` (or input side) makes that
    axis dynamic, as ``dynamic=True`` exports do.
    """
    if gain is None:
        gain = np.zeros_like(output)
    out_shape: list[int | str] = [batch, *output.shape[1:]]
    nodes = [
        # Mean over C, H, W keeps one value per image: [B, 1, 1, 1] -> [B, 1, 1].
        helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "mean_shape"], ["mean"]),
        helper.make_node("Mul", ["mean", "gain"], ["scaled"]),
        helper.make_node("Add", ["base", "scaled"], ["output0"]),
    ]
    initializers = [
        numpy_helper.from_array(output.astype(np.float32), "base"),
        numpy_helper.from_array(gain.astype(np.float32), "gain"),
        numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "mean_shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "yolo_stub",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, *input_hw])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    helper.set_model_props(model, dict(metadata))
    onnx.checker.check_model(model)
    return model


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` and return the path."""
    onnx.save(model, str(path))
    return path


def save_yolo_model(
    path: Path,
    output: NDArray[np.float32],
    names: Mapping[int, str] | None,
    *,
    batch: int | str = 1,
    input_hw: tuple[int | str, int | str] = INPUT_HW,
    imgsz: tuple[int, int] = INPUT_HW,
    gain: NDArray[np.float32] | None = None,
    task: str = "detect",
    end2end: bool | None = None,
) -> Path:
    """Build a YOLO-like model with ultralytics-style metadata and write it to ``path``."""
    metadata = yolo_metadata(
        names,
        imgsz,
        task=task,
        batch=batch if isinstance(batch, int) else 1,
        dynamic=isinstance(batch, str),
        end2end=end2end,
    )
    return save_model(build_model(output, metadata, batch=batch, input_hw=input_hw, gain=gain), path)
