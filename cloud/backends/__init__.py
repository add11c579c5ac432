"""Cloud backends: the models that judge suspicious samples (onnx reference detector, simulation oracle)."""

from cloud.backends.base import BackendConfig, build_backend
from cloud.backends.glm import GlmBackend, GlmBackendConfig
from cloud.backends.onnx import OnnxBackend, OnnxBackendConfig
from cloud.backends.openai import OpenAIBackend, OpenAIBackendConfig
from cloud.backends.oracle import OracleBackend, OracleBackendConfig
from cloud.backends.protocol import Backend, BackendStartError

__all__ = [
    "Backend",
    "BackendConfig",
    "BackendStartError",
    "GlmBackend",
    "GlmBackendConfig",
    "OnnxBackend",
    "OnnxBackendConfig",
    "OpenAIBackend",
    "OpenAIBackendConfig",
    "OracleBackend",
    "OracleBackendConfig",
    "build_backend",
]
