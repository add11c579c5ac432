"""The edge detector: a YOLO ONNX model run by ONNX Runtime, frames in, detections out.

Preprocessing, inference and postprocessing are separate methods so that a benchmark can time
``session.run`` alone on the same inputs, and so that a caller can move only the inference to
another thread. Only numpy, OpenCV and ONNX Runtime are needed at run time.

This is the one YOLO runtime of the project: the edge agent's detect stage and the cloud's `onnx`
backend both run it, so it imports nothing of the edge beyond `common.detect`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from common.detect.config import DetectorConfig
from common.detect.decode import Boxes, Detection, decode_e2e, decode_rtdetr, decode_v8, to_detections
from common.detect.errors import DetectorError
from common.detect.image import as_bgr_frame
from common.detect.layout import Layout, check_outputs, check_task, frames_per_run, output_layout, read_export
from common.detect.letterbox import Letterbox, boxes_to_frame, letterbox_into, stretch_into
from common.detect.model import ModelInput, read_input, read_names
from common.detect.providers import fallback_message, session_providers

logger = logging.getLogger(__name__)


class Detector:
    """Runs an ultralytics-exported YOLO detection model on BGR frames."""

    def __init__(self, config: DetectorConfig) -> None:
        """Load the model, pick the execution provider and check the model is a YOLO detector."""
        self._config = config
        self._model = str(config.model_path)
        available = list(ort.get_available_providers())
        self._available = available
        self._session = _open_session(config, session_providers(config.providers, available))
        self._provider = str(self._session.get_providers()[0])

        metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        export = read_export(metadata)
        check_task(export, self._model)
        self._names = read_names(metadata, self._model)
        outputs = self._session.get_outputs()
        check_outputs([(str(output.name), list(output.shape)) for output in outputs], self._model)
        session_input = self._session.get_inputs()[0]
        self._input: ModelInput = read_input(
            session_input.name, session_input.shape, session_input.type, metadata, self._model
        )
        self._frames_per_run = frames_per_run(self._input.batch_size, export)
        self._output_name = str(outputs[0].name)
        # The declared output shape is often symbolic (dynamic exports name every axis), so one
        # blank frame is run to learn the real one; it also warms the session up before readiness.
        probe = self.run(np.zeros((1, 3, *self._input.size_hw), dtype=np.float32))
        self._layout: Layout = output_layout(probe.shape, len(self._names), export, self._model)

        message = fallback_message(self._model, config.providers, available, self._provider)
        if message is not None:
            logger.warning(message)
        height, width = self._input.size_hw
        logger.info(
            "%s: detector on %s, input %dx%d, layout %s, %d classes, batch %s, intra-op threads %s",
            self._model,
            self._provider,
            width,
            height,
            self._layout,
            len(self._names),
            _batch_words(self._input.batch_size, self._frames_per_run),
            config.intra_op_threads or "ORT default",
        )

    @property
    def names(self) -> dict[int, str]:
        """Class id to class name, from the model's metadata."""
        return dict(self._names)

    @property
    def input_size(self) -> tuple[int, int]:
        """Model input (height, width) in pixels."""
        return self._input.size_hw

    @property
    def layout(self) -> Layout:
        """Output layout: ``"v8"`` (raw candidates, NMS here), ``"e2e"`` (NMS inside) or ``"rtdetr"``."""
        return self._layout

    @property
    def dynamic_batch(self) -> bool:
        """Whether the model's input batch axis is dynamic (see ``frames_per_run`` for what one run takes)."""
        return self._input.batch_size is None

    @property
    def frames_per_run(self) -> int | None:
        """Most frames one ``session.run`` takes (the fixed batch, or a dynamic NMS export's); None: any."""
        return self._frames_per_run

    @property
    def available_providers(self) -> list[str]:
        """The execution providers this onnxruntime build has, for logs and checks."""
        return list(self._available)

    @property
    def provider(self) -> str:
        """The execution provider the session runs on, e.g. ``CPUExecutionProvider``."""
        return self._provider

    def preprocess(
        self, frames: Sequence[NDArray[np.uint8]], max_ratios: Sequence[float | None] | None = None
    ) -> tuple[NDArray[np.float32], list[Letterbox]]:
        """Letterbox BGR frames into one NCHW float32 tensor; the params map boxes back.

        ``max_ratios`` caps, per frame, the resize ratio into the input (None: fit it, as ultralytics
        does). RT-DETR frames are stretched over the input instead, as ultralytics predicts them, and
        take no cap.
        """
        if not frames:
            raise DetectorError(f"{self._model}: preprocess needs at least one frame")
        ratios = [None] * len(frames) if max_ratios is None else list(max_ratios)
        if len(ratios) != len(frames):
            raise DetectorError(f"{self._model}: {len(frames)} frames but {len(ratios)} max_ratios; one per frame")
        # Each frame is letterboxed straight into its slot of the batch tensor: no intermediate
        # padded image, stack or transpose copy (the same values as letterbox + to_tensor).
        tensor = np.empty((len(frames), 3, *self._input.size_hw), dtype=np.float32)
        params = []
        for index, (frame, ratio) in enumerate(zip(frames, ratios, strict=True)):
            image = as_bgr_frame(frame, f"frames[{index}]")
            if self._layout == "rtdetr":
                params.append(stretch_into(image, tensor[index]))
            else:
                params.append(letterbox_into(image, tensor[index], ratio))
        return tensor, params

    def run(self, tensor: NDArray[np.float32]) -> NDArray[np.float32]:
        """Raw model output for an NCHW tensor from ``preprocess``, one row per image.

        One ``session.run`` when the model takes any number of frames (or exactly as many as the
        tensor holds); otherwise one run per chunk of ``frames_per_run``, the last chunk padded with
        blanks when the input batch axis is fixed.
        """
        expected = (3, *self._input.size_hw)
        if tensor.ndim != 4 or tensor.shape[1:] != expected or tensor.shape[0] == 0:
            raise DetectorError(
                f"{self._model}: input tensor has shape {list(tensor.shape)}; "
                f"expected [N, 3, {expected[1]}, {expected[2]}]"
            )
        limit = self._frames_per_run
        if limit is None or tensor.shape[0] == limit:
            return self._run_once(tensor)
        fixed = self._input.batch_size is not None
        outputs = []
        for start in range(0, tensor.shape[0], limit):
            chunk = tensor[start : start + limit]
            count = chunk.shape[0]
            if fixed and count < limit:
                padding = np.zeros((limit - count, *expected), dtype=tensor.dtype)
                chunk = np.concatenate([chunk, padding])
            outputs.append(self._run_once(chunk)[:count])
        return np.concatenate(outputs)

    def _run_once(self, tensor: NDArray[np.float32]) -> NDArray[np.float32]:
        feed = tensor.astype(np.float16) if self._input.half else tensor
        try:
            (output,) = self._session.run([self._output_name], {self._input.name: feed})
        except Exception as exc:  # ORT's exceptions share no base class below Exception
            raise DetectorError(f"{self._model}: inference failed on input {list(tensor.shape)}: {exc}") from exc
        result = np.asarray(output, dtype=np.float32)
        if result.ndim == 0 or result.shape[0] != tensor.shape[0]:
            raise DetectorError(
                f"{self._model}: output {list(result.shape)} for an input of {tensor.shape[0]} images; "
                "expected one output row per image (is the batch axis the first one?)"
            )
        return result

    def postprocess(
        self,
        raw: NDArray[np.float32],
        params: Sequence[Letterbox],
        frame_shapes: Sequence[tuple[int, ...]],
    ) -> list[list[Detection]]:
        """Decode raw output into detections per frame, boxes in original-frame pixels.

        ``frame_shapes`` are the original frames' shapes (``frame.shape`` will do).
        """
        if not len(raw) == len(params) == len(frame_shapes):
            raise DetectorError(
                f"{self._model}: postprocess got {len(raw)} outputs, {len(params)} letterbox params "
                f"and {len(frame_shapes)} frame shapes; they must match one to one"
            )
        config = self._config
        results: list[list[Detection]] = []
        for pred, box, shape in zip(raw, params, frame_shapes, strict=True):
            boxes: Boxes
            if self._layout == "v8":
                boxes = decode_v8(pred, config.conf_threshold, config.iou_threshold, config.max_det)
            elif self._layout == "e2e":
                boxes = decode_e2e(pred, config.conf_threshold, config.max_det)
            else:
                boxes = decode_rtdetr(pred, self._input.size_hw, config.conf_threshold, config.max_det)
            frame_hw = (int(shape[0]), int(shape[1]))
            results.append(to_detections(boxes_to_frame(boxes.xyxy, box, frame_hw), boxes, self._names))
        return results

    def detect(self, frame: NDArray[np.uint8]) -> list[Detection]:
        """Detect objects in one BGR frame."""
        return self.detect_batch([frame])[0]

    def detect_batch(
        self, frames: Sequence[NDArray[np.uint8]], max_ratios: Sequence[float | None] | None = None
    ) -> list[list[Detection]]:
        """Detect objects in several frames, in one inference when the model takes them all at once.

        ``max_ratios`` is ``preprocess``'.
        """
        if not frames:
            return []
        tensor, params = self.preprocess(frames, max_ratios)
        raw = self.run(tensor)
        return self.postprocess(raw, params, [frame.shape for frame in frames])

    def __repr__(self) -> str:
        """Model, provider and layout, for logs."""
        return f"Detector(model={self._model!r}, provider={self._provider!r}, layout={self._layout!r})"


def _open_session(config: DetectorConfig, providers: list[str]) -> ort.InferenceSession:
    """Create the ONNX Runtime session, turning load failures into a DetectorError naming the file."""
    path: Path = config.model_path
    if not path.is_file():
        raise DetectorError(f"{path}: model file not found (check model_path in the config)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT's exceptions share no base class below Exception
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DetectorError(f"{path}: not a loadable ONNX model: {first_line}") from exc


def _batch_words(input_batch: int | None, per_run: int | None) -> str:
    """The batch axis for the start-up log line: dynamic, fixed, or dynamic but capped by the export."""
    if per_run is None:
        return "dynamic"
    if input_batch is None:
        return f"dynamic, {per_run} per run (the export's NMS batch)"
    return str(input_batch)
