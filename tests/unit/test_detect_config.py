"""DetectorConfig: ultralytics' defaults, bounds, and no unknown keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.detect import DetectorConfig


def test_defaults_are_ultralytics_predict_defaults_on_cpu():
    config = DetectorConfig()

    assert (config.conf_threshold, config.iou_threshold, config.max_det) == (0.25, 0.7, 300)
    assert config.providers == ["cpu"]
    assert config.intra_op_threads == 0


def test_every_field_is_described():
    assert all(field.description for field in DetectorConfig.model_fields.values())


@pytest.mark.parametrize(
    "fields",
    [
        {"conf_threshold": 1.5},
        {"iou_threshold": -0.1},
        {"max_det": 0},
        {"intra_op_threads": -1},
        {"providers": []},
        {"providers": ["tensorrt"]},
        {"model": "x.onnx"},
    ],
    ids=["conf", "iou", "max_det", "threads", "no-providers", "unknown-provider", "unknown-key"],
)
def test_invalid_settings_are_rejected(fields):
    with pytest.raises(ValidationError):
        DetectorConfig.model_validate(fields)
