"""Configuration of the dynamic batcher (the `batcher` section of the cloud service's YAML)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BatcherConfig(BaseModel):
    """Triton-style dynamic batching: how big a batch may grow, how long to wait for it, how much may queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="Most requests per backend call (also capped by the backend's own max_batch_size).",
    )
    max_queue_delay_ms: float = Field(
        default=5.0,
        ge=0.0,
        le=60_000.0,
        description="How long the oldest waiting request may wait for a batch to fill before it goes anyway.",
    )
    max_queue_size: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description="Requests that may wait; one more is refused at once (queue_full) so callers back off.",
    )
    default_timeout_ms: float = Field(
        default=5_000.0,
        gt=0.0,
        le=3_600_000.0,
        description="Deadline of a request (queue plus inference) when the caller gives none.",
    )
    stop_timeout_s: float = Field(
        default=10.0,
        ge=0.0,
        le=600.0,
        description="How long stop() keeps serving queued requests before it fails the rest.",
    )
