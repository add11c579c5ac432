"""Reading what an ultralytics ONNX export says about itself: class names and its image input.

ultralytics writes its metadata into ONNX ``metadata_props`` as ``str(python_value)``, e.g.
``names = "{0: 'person', 1: 'cat'}"`` and ``imgsz = "[320, 320]"``, so values are parsed with
``ast.literal_eval`` (never ``eval``). A model that does not fit is refused here with a message
naming the file, before any frame reaches it.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.detect.errors import DetectorError

Dim = int | str | None

_INPUT_TYPES = {"tensor(float)": False, "tensor(float16)": True}


@dataclass(frozen=True, slots=True)
class ModelInput:
    """The model's image input: its name, spatial size, batch size (None if dynamic), precision."""

    name: str
    size_hw: tuple[int, int]
    batch_size: int | None
    half: bool


def format_shape(shape: Sequence[Dim]) -> str:
    """Shape as ``[1, 84, 2100]``, symbolic dims by name and unknown ones as ``?``."""
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def _literal(metadata: Mapping[str, str], key: str, model: str) -> object:
    try:
        return ast.literal_eval(metadata[key])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise DetectorError(f"{model}: metadata {key!r} is not a Python literal: {metadata[key][:80]!r}") from exc


def read_names(metadata: Mapping[str, str], model: str) -> dict[int, str]:
    """Class names from the ``names`` metadata (a dict, or a list as older exports wrote)."""
    if "names" not in metadata:
        raise DetectorError(
            f"{model}: no 'names' in the ONNX metadata, so class names and count are unknown; "
            "export the model with ultralytics (model.export(format='onnx')) which writes them"
        )
    value = _literal(metadata, "names", model)
    if isinstance(value, list):
        value = dict(enumerate(value))
    if not isinstance(value, dict) or not value or not all(isinstance(k, int) for k in value):
        raise DetectorError(f"{model}: metadata 'names' should map class ids to names, got {metadata['names'][:80]!r}")
    return {int(class_id): str(name) for class_id, name in value.items()}


def read_input(
    name: str, shape: Sequence[Dim], element_type: str, metadata: Mapping[str, str], model: str
) -> ModelInput:
    """Describe the image input from its ONNX shape, falling back to ``imgsz`` when H and W are dynamic."""
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise DetectorError(
            f"{model}: input {name!r} has shape {format_shape(shape)}; expected [batch, 3, height, width]"
        )
    if element_type not in _INPUT_TYPES:
        raise DetectorError(f"{model}: input {name!r} is {element_type}; expected tensor(float) or tensor(float16)")
    batch, _, height, width = shape
    size_hw = (height, width) if isinstance(height, int) and isinstance(width, int) else _imgsz(metadata, model)
    return ModelInput(
        name=name,
        size_hw=size_hw,
        batch_size=batch if isinstance(batch, int) else None,
        half=_INPUT_TYPES[element_type],
    )


def _imgsz(metadata: Mapping[str, str], model: str) -> tuple[int, int]:
    if "imgsz" not in metadata:
        raise DetectorError(f"{model}: input height and width are dynamic and the metadata has no 'imgsz'")
    value = _literal(metadata, "imgsz", model)
    if isinstance(value, int):
        value = [value, value]
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(side, int) and side > 0 for side in value)
    ):
        raise DetectorError(f"{model}: metadata 'imgsz' should be [height, width], got {metadata['imgsz']!r}")
    return int(value[0]), int(value[1])
