"""The batcher stage: Triton-style dynamic batching of single requests in front of one backend."""

from cloud.batcher.config import BatcherConfig
from cloud.batcher.dynamic import DynamicBatcher, Reply, Ticket
from cloud.batcher.errors import (
    BackendError,
    BatcherError,
    BatcherStoppedError,
    InferenceTimeoutError,
    QueueFullError,
)

__all__ = [
    "BackendError",
    "BatcherConfig",
    "BatcherError",
    "BatcherStoppedError",
    "DynamicBatcher",
    "InferenceTimeoutError",
    "QueueFullError",
    "Reply",
    "Ticket",
]
