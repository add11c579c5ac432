"""Configuration of the edge detector (the `detect` section of the edge agent's YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ProviderName = Literal["cuda", "openvino", "cpu"]


class DetectorConfig(BaseModel):
    """Which YOLO ONNX model to run, where, and how to turn its output into detections."""

    model_config = ConfigDict(extra="forbid")

    model_path: Path = Field(
        default=Path("models/edge.onnx"),
        description="YOLO detection model exported to ONNX by ultralytics (class names from its metadata).",
    )
    providers: list[ProviderName] = Field(
        default=["cpu"],
        min_length=1,
        description="ONNX Runtime execution providers in order of preference; CPU is the last resort.",
    )
    conf_threshold: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="Minimum class score for a box to be kept (ultralytics' default).",
    )
    iou_threshold: float = Field(
        default=0.7, ge=0.0, le=1.0, description="IoU above which NMS suppresses a box of the same class."
    )
    max_det: int = Field(default=300, ge=1, le=10_000, description="Maximum number of detections per frame.")
    intra_op_threads: int = Field(
        default=0, ge=0, le=256, description="ONNX Runtime intra-op threads; 0 lets ONNX Runtime decide."
    )
