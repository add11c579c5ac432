"""The `dataset:` section of cloud.yaml: where the field dataset lives and how much of it is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class S3Config(BaseModel):
    """An S3-compatible bucket for the images."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["s3"] = "s3"
    bucket: str = Field(..., min_length=3, max_length=63, description="The bucket (it must exist).")
    prefix: str = Field("field-dataset/", max_length=512, description="Key prefix of every image.")
    endpoint_url: str | None = Field(
        None, description="The S3 API's URL for a service other than AWS (MinIO, Ceph); unset: AWS."
    )
    region: str = Field("us-east-1", description="The bucket's region.")
    credentials_file: Path | None = Field(
        None,
        description="An AWS-style credentials file (a Secret) whose [default] has aws_access_key_id and "
        "aws_secret_access_key; unset: boto3's own chain (environment, ~/.aws, the pod's role).",
    )


class FolderConfig(BaseModel):
    """Images in the dataset's own folder (dataset.path)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["folder"] = "folder"


class DatasetConfig(BaseModel):
    """Every judged sample's image with the cloud's labels, kept for retraining the edge model (issue 15)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Keep a training record of every judged sample.")
    path: Path = Field(
        Path("/var/lib/edgeglm-cloud/field-dataset"),
        description="Folder of the records' index (index.sqlite; on store.kind postgres the records are in the "
        "database) and, with storage kind folder, of the images.",
    )
    storage: FolderConfig | S3Config = Field(
        default_factory=FolderConfig,
        discriminator="kind",
        description="Where the images go: folder (under path) or s3 (any S3-compatible bucket). With s3 and a "
        "PostgreSQL store, every replica keeps records in one shared dataset.",
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
