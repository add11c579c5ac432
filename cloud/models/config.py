"""The `models:` section of cloud.yaml: the registry edges fetch models from, and how rollouts go."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MIB = 1 << 20


class RolloutConfig(BaseModel):
    """How a new model reaches the fleet: canaries first, then everyone, unless the canaries do worse."""

    model_config = ConfigDict(extra="forbid")

    canary_fraction: float = Field(
        0.1, gt=0, le=1, description="Share of the connected edges that get the model first (at least one)."
    )
    soak_s: float = Field(
        900.0, ge=0, le=30 * 86_400, description="How long the canaries run the model before the rest get it."
    )
    min_samples: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="Judged samples of the canaries on the new model needed before their health is trusted.",
    )
    max_rejection_increase: float = Field(
        0.1,
        ge=0,
        le=1,
        description=(
            "Health bound: the canaries' cloud rejection rate on the new model may exceed the baseline's (edges on "
            "the old model, same period) by at most this much; above it the canaries are rolled back."
        ),
    )
    switch_timeout_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="A canary that does not report the new model within this long (it refused it) fails the rollout.",
    )
    max_wait_s: float = Field(
        86_400.0,
        gt=0,
        le=90 * 86_400,
        description="A canary stage without enough judged samples by then pauses for an operator to decide.",
    )
    min_frames: int = Field(
        100,
        ge=1,
        le=10_000_000,
        description="Frames a canary must detect on each model before its detections and latency are compared.",
    )
    max_detection_change: float = Field(
        2.0,
        gt=1,
        le=100,
        description=(
            "Health bound: a canary's detections per frame on the new model may be at most this many times, or at "
            "least 1/this, what they were on the old model; outside it, the canaries are rolled back."
        ),
    )
    max_latency_increase: float = Field(
        2.0,
        gt=1,
        le=100,
        description="Health bound: a canary's detector time per frame may grow at most this many times.",
    )
    check_every_s: float = Field(5.0, gt=0, le=3600, description="How often a rollout's health is checked.")


class ModelsConfig(BaseModel):
    """Published edge models and their rollout."""

    model_config = ConfigDict(extra="forbid")

    registry: Path | None = Field(
        None,
        description="Folder of published models (<name>/<version>/model.onnx + manifest.json); unset: none served.",
    )
    chunk_bytes: int = Field(
        1 * MIB, ge=4096, le=4 * MIB, description="Bytes per FetchModel piece (within server.max_send_message_bytes)."
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Stages and health bounds.")
