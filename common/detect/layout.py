"""What kind of export a model is, from its metadata *and* its outputs, and how to decode it.

ultralytics' exporter writes ``task``, ``head`` (newer versions), ``batch``, ``end2end`` and the export
``args`` (``nms``, ``dynamic``, ``batch``) into the metadata. Metadata can be stripped or written by
another tool, so a model is accepted only when its outputs fit a detection layout too, and a model
that does not fit is refused with what was found and what would fit, never decoded into garbage.

Three detection layouts are decoded (see ``common.detect.decode``): ``v8`` ``[B, 4+nc, N]``, ``e2e``
``[B, N, 6]`` and ``rtdetr`` ``[B, Q, 4+nc]``. The last two both read ``[B, 300, 6]`` when nc is 2, so
RT-DETR is recognised by its metadata (``head: RTDETRDecoder``, or an ``rtdetr`` model description).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from common.detect.errors import DetectorError
from common.detect.model import Dim, format_shape

Layout = Literal["v8", "e2e", "rtdetr"]

# ultralytics' detection heads (Detect subclasses that add nothing per box, and RT-DETR's decoder).
DETECTION_HEADS = frozenset({"Detect", "v10Detect", "WorldDetect", "YOLOEDetect", "RTDETRDecoder"})
# Words in the names of the heads of other tasks: Segment, Segment26, YOLOESegment, Pose26, OBB, Classify...
_OTHER_TASK_HEADS = {"Segment": "segment", "Pose": "pose", "OBB": "obb", "Classify": "classify"}
_MASK_COEFFICIENTS = 32  # ultralytics' segmentation heads predict 32 mask coefficients per box
_ADVICE = "only detection models are supported: export a detection model (e.g. yolo11n.pt, not -seg/-pose/-obb/-cls)"


@dataclass(frozen=True, slots=True)
class ExportFacts:
    """What the metadata says about how the model was exported (None where it says nothing)."""

    task: str | None
    head: str | None
    end2end: bool
    nms: bool
    batch: int | None
    rtdetr: bool
    kpt_shape: tuple[int, ...] | None


def _parse(metadata: Mapping[str, str], key: str) -> object:
    """A metadata value as the Python literal ultralytics wrote, or None when absent or unreadable."""
    try:
        return ast.literal_eval(metadata[key])
    except (KeyError, ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None  # informational keys: the outputs still decide


def read_export(metadata: Mapping[str, str]) -> ExportFacts:
    """Collect the export facts ultralytics writes: task, head, end2end, nms, batch, kpt_shape.

    ``args['dynamic']`` is not needed: the input's batch axis itself says whether it is dynamic.
    """
    args = _parse(metadata, "args")
    args = args if isinstance(args, dict) else {}
    nms = args.get("nms") is True
    batch = _parse(metadata, "batch")
    if not isinstance(batch, int):
        batch = args.get("batch")
    head = metadata.get("head")
    description = metadata.get("description", "").lower()
    kpt_shape = _parse(metadata, "kpt_shape")
    return ExportFacts(
        task=metadata.get("task"),
        head=head,
        end2end=metadata.get("end2end") == "True" or nms,
        nms=nms,
        batch=batch if isinstance(batch, int) and batch > 0 else None,
        rtdetr=head == "RTDETRDecoder" or "rtdetr" in description or "rt-detr" in description,
        kpt_shape=tuple(kpt_shape) if isinstance(kpt_shape, list | tuple) else None,
    )


def check_task(facts: ExportFacts, model: str) -> None:
    """Refuse segmentation, pose, classification, OBB... exports by their metadata: task, head, keypoints."""
    if facts.task is not None and facts.task != "detect":
        raise DetectorError(f"{model}: task is {facts.task!r} in the metadata; {_ADVICE}")
    if facts.head is not None and facts.head not in DETECTION_HEADS:
        for word, task in _OTHER_TASK_HEADS.items():
            if word in facts.head:
                raise DetectorError(f"{model}: the metadata names a {facts.head} head, a {task!r} model; {_ADVICE}")
    if facts.kpt_shape is not None:
        raise DetectorError(f"{model}: the metadata has kpt_shape {list(facts.kpt_shape)}, a pose model; {_ADVICE}")


def check_outputs(outputs: Sequence[tuple[str, Sequence[Dim]]], model: str) -> None:
    """Refuse models with several outputs: a detection export has one (segmentation adds mask prototypes)."""
    if len(outputs) == 1:
        return
    found = ", ".join(f"{name} {format_shape(shape)}" for name, shape in outputs)
    hint = " (a segmentation export: boxes and mask coefficients, then mask prototypes)" if len(outputs) == 2 else ""
    raise DetectorError(
        f"{model}: the model has {len(outputs)} outputs: {found}{hint}; "
        f"a YOLO detection export has exactly one; {_ADVICE}"
    )


def output_layout(shape: Sequence[Dim], nc: int, facts: ExportFacts, model: str) -> Layout:
    """Decide the layout from the actual output shape, the class count and the export facts."""
    batch = shape[0] if shape else "batch"
    three_d = len(shape) == 3
    if facts.rtdetr:
        if three_d and shape[2] == 4 + nc:
            return "rtdetr"
        raise DetectorError(
            f"{model}: the metadata says RT-DETR but output shape {format_shape(shape)} does not match "
            f"[{batch}, queries, 4+nc] with nc={nc}"
        )
    if facts.end2end:
        if three_d and shape[2] == 6:
            return "e2e"
        raise DetectorError(
            f"{model}: metadata says the model is end-to-end but output shape {format_shape(shape)} "
            f"does not match [{batch}, N, 6]{_other_task_hint(shape, nc, facts)}"
        )
    v8_fits = three_d and shape[1] == 4 + nc
    e2e_fits = three_d and shape[2] == 6
    # [B, 6, N] with nc=2 fits both; ultralytics' default head is the v8 one.
    if v8_fits:
        return "v8"
    if e2e_fits and nc == 2:
        raise DetectorError(
            f"{model}: output shape {format_shape(shape)} fits both the end-to-end layout [{batch}, N, 6] "
            f"(x1, y1, x2, y2, score, class) and RT-DETR's [{batch}, queries, 4+nc] with nc=2 "
            "(normalised cx, cy, w, h and two class scores), and the metadata says neither "
            "('end2end', 'args' nms, 'head'); re-export it with a current ultralytics, which writes them"
        )
    if e2e_fits:
        return "e2e"
    if three_d and shape[2] == 4 + nc:
        raise DetectorError(
            f"{model}: output shape {format_shape(shape)} looks like RT-DETR's [{batch}, queries, 4+nc] "
            f"with nc={nc}, but the metadata names no RT-DETR head ('head' or description); "
            "export it with ultralytics' RTDETR(...).export(format='onnx'), which writes them"
        )
    raise DetectorError(
        f"{model}: output shape {format_shape(shape)} does not match YOLO layout [{batch}, 4+nc, N] "
        f"with nc={nc} from metadata, nor end-to-end layout [{batch}, N, 6]{_other_task_hint(shape, nc, facts)}"
    )


def _other_task_hint(shape: Sequence[Dim], nc: int, facts: ExportFacts) -> str:
    """What the shape looks like when it is another task's output, as a clause for an error message."""
    if len(shape) == 2:
        return f"; [batch, {shape[1]}] is one score per class: a classification export; {_ADVICE}"
    if len(shape) != 3:
        return f"; a {len(shape)}-D output is not a detection output; {_ADVICE}"
    rows, columns = shape[1], shape[2]
    if not isinstance(rows, int) or not isinstance(columns, int):
        return ""
    # The values per box run along the shorter axis: [B, 4+nc+extra, anchors] or [B, max_det, 6+extra].
    extra = rows - 4 - nc if rows < columns else columns - 6
    if extra == 1:
        return f"; one value more per box than detection is an oriented-box angle: an OBB export; {_ADVICE}"
    if extra == _MASK_COEFFICIENTS:
        return f"; {_MASK_COEFFICIENTS} values more per box are mask coefficients: a segmentation export; {_ADVICE}"
    if extra > 0 and extra % 3 == 0:
        return f"; {extra} values more per box may be keypoints ({extra // 3} x 3): a pose export; {_ADVICE}"
    return ""


def frames_per_run(input_batch: int | None, facts: ExportFacts) -> int | None:
    """How many frames one ``session.run`` may take; None when any number.

    A fixed input batch axis says it. A dynamic ``nms=True`` export says it in its metadata: its NMS
    loop is unrolled over the export's batch size when traced, so frames past that size come back
    with no detections at all (ultralytics itself splits such batches to the export's size).
    """
    if input_batch is not None:
        return input_batch
    if facts.nms:
        return facts.batch or 1
    return None
