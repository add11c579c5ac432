"""The detect stage: YOLO detection with ONNX Runtime on edge frames.

Any YOLO detection model exported to ONNX by ultralytics runs here (v8/v11 heads, end-to-end heads or
``nms=True`` exports, RT-DETR), on the execution provider the config prefers among those this
onnxruntime build has. It is the project's one YOLO runtime: the cloud's ``onnx`` backend runs it
too, so this package imports nothing else of the edge (tests/unit/test_detect_is_a_leaf.py).
"""

from common.detect.config import DetectorConfig, ProviderName
from common.detect.decode import Detection
from common.detect.errors import DetectorError, ImageDecodeError
from common.detect.image import decode_image
from common.detect.letterbox import Letterbox
from common.detect.runtime import Detector

__all__ = [
    "Detection",
    "Detector",
    "DetectorConfig",
    "DetectorError",
    "ImageDecodeError",
    "Letterbox",
    "ProviderName",
    "decode_image",
]
