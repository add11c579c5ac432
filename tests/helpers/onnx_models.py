"""Tiny ONNX models that behave like ultralytics YOLO exports, built with ``onnx.helper``.

Each model takes ``images [B, 3, H, W]`` and returns a designed tensor: a constant plus
``ReduceMean(images) * gain``. With a zero gain the output is exactly the constant (a known set of
candidate boxes); a non-zero gain makes chosen scores follow the frame's brightness, so frames in
one batch give different results. ``metadata_props`` are written the way ultralytics writes them:
``str(python_value)``, with the keys its exporter writes (``batch``, ``args`` with ``nms`` and
``dynamic``, ``end2end``, ``head``...).

``rows_kept`` emulates a dynamic ``nms=True`` export: ultralytics' NMS wrapper loops over the batch
it was traced with, so rows past that count come out all zero whatever the input.
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
    nms: bool = False,
    extra: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """Metadata as ultralytics' exporter writes it (values are ``str()`` of Python values).

    ``extra`` adds or replaces keys (``head``, ``description``, ``kpt_shape``...); a None value removes one.
    """
    metadata = {
        "description": "test model",
        "author": "Ultralytics",
        "stride": "32",
        "task": task,
        "batch": str(batch),
        "imgsz": str(list(imgsz)),
        "args": str({"batch": batch, "dynamic": dynamic, "nms": nms}),
    }
    if names is not None:
        metadata["names"] = str(dict(names))
    if end2end is not None:
        metadata["end2end"] = str(end2end)
    for key, value in (extra or {}).items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
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


def rtdetr_output(
    queries: Sequence[tuple[float, float, float, float, int, float]], nc: int, num_queries: int = 300
) -> NDArray[np.float32]:
    """A ``[1, Q, 4 + nc]`` RT-DETR output: normalised cx, cy, w, h and class scores per query.

    ``queries`` are (cx, cy, w, h, class id, score); the other queries are small boxes scoring 0.01.
    """
    out = np.zeros((1, num_queries, 4 + nc), dtype=np.float32)
    out[0, :, :4] = (0.1, 0.1, 0.02, 0.02)
    out[0, :, 4:] = 0.01
    for index, (cx, cy, w, h, class_id, score) in enumerate(queries):
        out[0, index, :4] = (cx, cy, w, h)
        out[0, index, 4 + class_id] = score
    return out


def build_model(
    output: NDArray[np.float32],
    metadata: Mapping[str, str],
    *,
    batch: int | str = 1,
    input_hw: tuple[int | str, int | str] = INPUT_HW,
    gain: NDArray[np.float32] | None = None,
    rows_kept: int | None = None,
    extra_outputs: Mapping[str, NDArray[np.float32]] | None = None,
) -> onnx.ModelProto:
    """A model whose output is ``output + ReduceMean(images) * gain`` broadcast over the batch.

    ``output`` and ``gain`` have shape ``[1, ...]``; a string ``batch`` (or input side) makes that
    axis dynamic, as ``dynamic=True`` exports do. ``rows_kept`` zeroes the rows of images past that
    index; ``extra_outputs`` are constant outputs after ``output0`` (a segmentation export's protos).
    """
    if gain is None:
        gain = np.zeros_like(output)
    out_shape: list[int | str] = [batch, *output.shape[1:]]
    final = "output0" if rows_kept is None else "unmasked"
    nodes = [
        # Mean over C, H, W keeps one value per image: [B, 1, 1, 1] -> [B, 1, 1] (as many axes as the output).
        helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "mean_shape"], ["mean"]),
        helper.make_node("Mul", ["mean", "gain"], ["scaled"]),
        helper.make_node("Add", ["base", "scaled"], [final]),
    ]
    initializers = [
        numpy_helper.from_array(output.astype(np.float32), "base"),
        numpy_helper.from_array(gain.astype(np.float32), "gain"),
        numpy_helper.from_array(np.array([-1] + [1] * (output.ndim - 1), dtype=np.int64), "mean_shape"),
    ]
    if rows_kept is not None:
        nodes += _row_mask_nodes(final, "output0")
        initializers += [
            numpy_helper.from_array(np.array(rows_kept, dtype=np.int64), "rows_kept"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "first_axis"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        ]
    outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)]
    for name, value in (extra_outputs or {}).items():
        initializers.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_value"))
        nodes.append(helper.make_node("Identity", [f"{name}_value"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes,
        "yolo_stub",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, *input_hw])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    helper.set_model_props(model, dict(metadata))
    onnx.checker.check_model(model)
    return model


def _row_mask_nodes(source: str, target: str) -> list[onnx.NodeProto]:
    """Nodes computing ``target = source * (row index < rows_kept)`` over the batch axis."""
    return [
        helper.make_node("Shape", ["images"], ["images_shape"]),
        helper.make_node("Gather", ["images_shape", "zero"], ["batch_size"], axis=0),
        helper.make_node("Range", ["zero", "batch_size", "one"], ["row_index"]),
        helper.make_node("Less", ["row_index", "rows_kept"], ["row_kept"]),
        helper.make_node("Cast", ["row_kept"], ["row_kept_float"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["row_kept_float", "mean_shape"], ["row_mask"]),
        helper.make_node("Mul", [source, "row_mask"], [target]),
    ]


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
    nms: bool = False,
    export_batch: int | None = None,
    rows_kept: int | None = None,
    extra_outputs: Mapping[str, NDArray[np.float32]] | None = None,
    extra_metadata: Mapping[str, str | None] | None = None,
) -> Path:
    """Build a YOLO-like model with ultralytics-style metadata and write it to ``path``.

    ``export_batch`` is the metadata ``batch`` (default: the input's fixed batch, else 1).
    """
    metadata = yolo_metadata(
        names,
        imgsz,
        task=task,
        batch=export_batch or (batch if isinstance(batch, int) else 1),
        dynamic=isinstance(batch, str),
        end2end=end2end,
        nms=nms,
        extra=extra_metadata,
    )
    model = build_model(
        output,
        metadata,
        batch=batch,
        input_hw=input_hw,
        gain=gain,
        rows_kept=rows_kept,
        extra_outputs=extra_outputs,
    )
    return save_model(model, path)
