"""Choosing the cloud backend from config: the discriminated union of backend configs and its factory.

Each backend is one module with its config model (`kind: Literal[...]`) and its class. New backends
plug in here: the `glm` backend (GLM-4V through transformers, `cloud/backends/glm.py`) and the
`openai` backend (an OpenAI-compatible endpoint such as vLLM or SGLang serving GLM,
`cloud/backends/openai.py`) each add their config to `BackendConfig` and a branch to
`build_backend`. Keep heavy imports (torch, transformers) inside their `start`, so that reading the
config does not load them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cloud.backends.glm import GlmBackend, GlmBackendConfig
from cloud.backends.onnx import OnnxBackend, OnnxBackendConfig
from cloud.backends.openai import OpenAIBackend, OpenAIBackendConfig
from cloud.backends.oracle import OracleBackend, OracleBackendConfig
from cloud.backends.protocol import Backend, BackendStartError
from cloud.metrics import CloudMetrics

BackendConfig = Annotated[
    OnnxBackendConfig | OracleBackendConfig | OpenAIBackendConfig | GlmBackendConfig, Field(discriminator="kind")
]

__all__ = ["Backend", "BackendConfig", "BackendStartError", "build_backend"]


def build_backend(config: BackendConfig, metrics: CloudMetrics | None = None) -> Backend:
    """The backend a config selects, not started yet (call `start`, or let the batcher do it).

    `metrics` is where backends that count their own errors (openai, glm) count them.
    """
    if isinstance(config, GlmBackendConfig):
        return GlmBackend(config, metrics)
    if isinstance(config, OpenAIBackendConfig):
        return OpenAIBackend(config, metrics)
    if isinstance(config, OnnxBackendConfig):
        return OnnxBackend(config)
    return OracleBackend(config)
