"""The detect stage: YOLO detection with ONNX Runtime on edge frames.

Any YOLO detection model exported to ONNX by ultralytics runs here, in either output layout, on the
execution provider the config prefers among those this onnxruntime build has.
"""

from edge.detect.config import DetectorConfig, ProviderName
from edge.detect.decode import Detection
from edge.detect.errors import DetectorError, ImageDecodeError
from edge.detect.image import decode_image
from edge.detect.letterbox import Letterbox
from edge.detect.runtime import Detector

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
