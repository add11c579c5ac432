"""The `onnx` backend: a larger reference YOLO detector at full resolution, judged by the shared rule.

The detector is the project's one YOLO runtime, `common.detect` (a leaf library the cloud image carries
without the rest of the edge): the same letterbox, layouts (v8, end-to-end, RT-DETR), NMS and checks
of the model as on the edge. This module is the glue: config, the scale crops enter the model at,
and detections turned into verdicts.

ONNX Runtime runs in one dedicated worker thread: the batcher already sends one batch at a time, and
a single thread keeps the session's own intra-op threads (`intra_op_threads`) the only parallelism.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud.backends.decide import judge
from cloud.backends.protocol import BackendStartError
from cloud.convert import BackendResult, CloudDetection, SampleInput, detections_to_frame
from common.detect import Detection, Detector, DetectorConfig, DetectorError, ProviderName

logger = logging.getLogger(__name__)


class OnnxBackendConfig(BaseModel):
    """A reference YOLO detector exported to ONNX by ultralytics, and how its findings become verdicts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["onnx"] = Field(default="onnx", description="Selects the ONNX reference-detector backend.")
    model_path: Path = Field(
        default=Path("sim/models/reference.onnx"),
        description="YOLO detection model exported to ONNX by ultralytics (class names from its metadata).",
    )
    model_name: str = Field(default="", description="Model name written in verdicts; empty: the file's stem.")
    model_version: str = Field(
        default="", description="Model version written in verdicts; empty: 'sha256:' and 12 hex of the file."
    )
    providers: list[ProviderName] = Field(
        default=["cuda", "cpu"],
        min_length=1,
        description="ONNX Runtime execution providers in order of preference; CPU is always the last resort.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, le=256, description="ONNX Runtime intra-op threads; 0 lets ONNX Runtime decide."
    )
    conf_threshold: float = Field(default=0.25, ge=0.0, le=1.0, description="Minimum score of a reference box.")
    iou_threshold: float = Field(default=0.7, ge=0.0, le=1.0, description="IoU above which NMS drops a same-class box.")
    max_det: int = Field(default=300, ge=1, le=10_000, description="Maximum reference boxes per image.")
    match_iou: float = Field(
        default=0.3,
        gt=0.0,
        le=1.0,
        description="IoU with an edge box at which a reference box of the same label confirms it (full frames).",
    )
    max_batch_size: int = Field(default=8, ge=1, le=256, description="Most samples per inference call.")
    crop_scale: Literal["frame", "fit"] = Field(
        default="frame",
        description=(
            "How a crop enters the model input: 'frame' at the scale a whole frame would have (objects keep the "
            "size the detector was trained on), 'fit' enlarged to fill the input."
        ),
    )


class OnnxBackend:
    """Judges samples with a reference YOLO detector through ONNX Runtime."""

    name = "onnx"

    def __init__(self, config: OnnxBackendConfig) -> None:
        """Keep the config; the model loads in `start`."""
        self._config = config
        self._model: Detector | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._version = config.model_version

    @property
    def model_name(self) -> str:
        """Name of the reference model."""
        return self._config.model_name or self._config.model_path.stem

    @property
    def model_version(self) -> str:
        """Version of the reference model ("unknown" before `start`)."""
        return self._version or "unknown"

    @property
    def max_batch_size(self) -> int:
        """Most samples per `infer` call."""
        return self._config.max_batch_size

    @property
    def provider(self) -> str | None:
        """The execution provider picked at start, e.g. CUDAExecutionProvider; None before start."""
        return self._model.provider if self._model is not None else None

    async def start(self) -> None:
        """Load the model in the backend's thread and log where it runs; again is a no-op."""
        if self._model is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-backend")
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(self._executor, self._load)

    def _load(self) -> Detector:
        config = self._config
        try:
            model = Detector(
                DetectorConfig(
                    model_path=config.model_path,
                    providers=config.providers,
                    conf_threshold=config.conf_threshold,
                    iou_threshold=config.iou_threshold,
                    max_det=config.max_det,
                    intra_op_threads=config.intra_op_threads,
                )
            )
        except DetectorError as exc:
            raise BackendStartError(f"onnx backend: {exc}") from exc
        if not self._version:
            self._version = "sha256:" + hashlib.sha256(config.model_path.read_bytes()).hexdigest()[:12]
        # The detector has already warned when it fell back from the preferred provider.
        height, width = model.input_size
        logger.info(
            "onnx backend: %s (%s) runs on %s (asked %s, this onnxruntime has %s); input %dx%d, %d classes, "
            "batch %s, intra-op threads %s",
            config.model_path,
            self._version,
            model.provider,
            list(config.providers),
            model.available_providers,
            width,
            height,
            len(model.names),
            model.frames_per_run or "dynamic",
            config.intra_op_threads or "ORT default",
        )
        if model.layout == "rtdetr" and config.crop_scale == "frame":
            logger.warning(
                "onnx backend: %s is an RT-DETR model, which sees every image stretched over its input "
                "(as ultralytics predicts it); crop_scale 'frame' does not apply, crops fill the input",
                config.model_path,
            )
        return model

    async def infer(self, batch: list[SampleInput], deadline: float | None = None) -> list[BackendResult]:
        """Detect on every sample's image at once, map the boxes into the frame, apply the decision rule."""
        if self._model is None or self._executor is None:
            raise RuntimeError(f"onnx backend {self._config.model_path}: infer called before start")
        if not batch:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._infer_blocking, self._model, batch)

    def _infer_blocking(self, model: Detector, batch: list[SampleInput]) -> list[BackendResult]:
        scales = [self._input_scale(model, s) for s in batch]
        found = model.detect_batch([s.image for s in batch], scales)
        return [
            judge(sample, detections_to_frame(map(_cloud_detection, in_image), sample.region), self._config.match_iou)
            for sample, in_image in zip(batch, found, strict=True)
        ]

    def _input_scale(self, model: Detector, sample: SampleInput) -> float | None:
        """Resize ratio from image pixels into the model input that gives the whole frame's scale."""
        if self._config.crop_scale == "fit":
            return None
        frame_w, frame_h = sample.frame_size
        input_h, input_w = model.input_size
        frame_ratio = min(input_h / frame_h, input_w / frame_w)
        region = sample.region
        return frame_ratio * region.area.width / region.image_wh[0]

    async def close(self) -> None:
        """Release the session and its thread (a running inference finishes in the background)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._model = None


def _cloud_detection(found: Detection) -> CloudDetection:
    """A detector's box (in the sample image's pixels) as the cloud's detection type."""
    return CloudDetection(found.label, found.class_id, found.score, found.box)
