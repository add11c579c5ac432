"""The `dataset:` section of cloud.yaml: where the field dataset lives and how much of it is kept."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class DatasetConfig(BaseModel):
    """Every judged sample's image with the cloud's labels, kept for retraining the edge model (issue 15)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Keep a training record of every judged sample.")
    path: Path = Field(
        Path("/var/lib/edgeglm-cloud/field-dataset"),
        description="Folder of the records: images/ and index.sqlite. Replicas need one each, or a shared volume.",
    )
    max_bytes: int = Field(
        2 << 30, ge=1 << 16, description="Images kept at most, in bytes; the oldest records go first beyond it."
    )
    retention_s: float = Field(
        30 * 86400.0, ge=60, description="Records older than this (by when they were kept) are removed."
    )
    near_duplicate_bits: int = Field(
        4,
        ge=0,
        le=32,
        description="An image whose 64-bit difference hash is this close (bits) to one of the camera's recent records "
        "with the same labels is a near duplicate and not kept (0: only identical hashes).",
    )
    near_duplicate_window: int = Field(
        200, ge=1, le=10_000, description="How many of a camera's newest records a new image is compared with."
    )
    max_pending: int = Field(
        256, ge=1, le=100_000, description="Records waiting to be written at most; beyond it new ones are dropped."
    )
