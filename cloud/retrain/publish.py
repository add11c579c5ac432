"""A promoted candidate into the model registry, with a signed manifest that says where it came from."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.models.registry import ModelRegistry, PublishedModel
from common.manifest import describe_model


def utc_now() -> datetime:
    """The time manifests and default versions are stamped with."""
    return datetime.now(UTC)


def default_version(now: datetime) -> str:
    """A version that sorts by time: ``ft-YYYYMMDD-HHMMSS`` (UTC)."""
    return now.strftime("ft-%Y%m%d-%H%M%S")


def publish_candidate(
    registry: ModelRegistry,
    onnx: Path,
    key: Ed25519PrivateKey,
    *,
    name: str,
    version: str,
    parent: str,
    metrics: dict[str, Any],
    training: dict[str, Any],
    created_at: datetime,
) -> PublishedModel:
    """Describe `onnx` (the detector runtime reads its classes and input size), sign and publish it."""
    manifest = describe_model(
        onnx,
        name=name,
        version=version,
        parent=parent,
        metrics=metrics,
        training=training,
        created_at=created_at.isoformat(timespec="seconds"),
    )
    return registry.publish(onnx, manifest, key)
