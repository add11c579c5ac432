"""Real ONNX model files for the rollout tests: variants of the committed edge model and files an edge
must refuse (a segmentation export) or that a canary must catch (a detector that sees what is not there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from common.detect import Detector, DetectorConfig
from common.manifest import ModelManifest, file_digest
from tests.helpers.agents import MODEL
from tests.helpers.onnx_models import Candidate, save_yolo_model, v8_output

NAME = "yolo-edge"


def variant(out: Path, tag: str) -> Path:
    """The committed edge model with one metadata value changed: the same detector, another file."""
    model = onnx.load(str(MODEL))
    for prop in model.metadata_props:
        if prop.key == "description":
            prop.value = f"{prop.value} ({tag})"
    onnx.save(model, str(out))
    return out


def segmentation_model(out: Path) -> Path:
    """A segmentation export (boxes, classes, 32 mask coefficients, protos) with the edge model's classes."""
    names = Detector(DetectorConfig(model_path=MODEL)).names
    output = v8_output([], nc=len(names) + 32, anchors=64)
    protos = {"output1": np.zeros((1, 32, 80, 80), np.float32)}
    return save_yolo_model(out, output, names, task="segment", extra_outputs=protos)


def hand_manifest(path: Path, version: str) -> ModelManifest:
    """A manifest written without the detector runtime (which refuses a segmentation file)."""
    names = Detector(DetectorConfig(model_path=MODEL)).names
    sha256, size = file_digest(path)
    return ModelManifest(
        name=NAME,
        version=version,
        sha256=sha256,
        size_bytes=size,
        input_size=(320, 320),
        classes=[names[i] for i in range(len(names))],
    )


def phantom_detector(out: Path) -> Path:
    """The edge model's classes and input, but a confident person in the top-left corner of every frame."""
    names = Detector(DetectorConfig(model_path=MODEL)).names
    output = v8_output([Candidate(cx=20, cy=20, w=24, h=24, class_id=0, score=0.9)], nc=len(names), anchors=8)
    return save_yolo_model(out, output, names, batch="batch")
