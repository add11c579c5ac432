"""What the store keeps and answers with, as plain dataclasses (no database types leak out of the store)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

DecisionName = Literal["confirmed", "rejected", "unsure"]
ScopeName = Literal["fleet", "site", "edge"]


@dataclass(frozen=True, slots=True)
class EdgeDetectionSummary:
    """One of the edge's detections as the store keeps it: label and score (no box)."""

    label: str
    score: float


@dataclass(frozen=True, slots=True)
class SampleMeta:
    """What the cloud knows of a sample besides its verdict: where it came from, why, how big, a thumbnail."""

    camera_id: str = ""
    frame_seq: int = 0
    captured_at: float | None = None  # unix seconds, edge clock
    mined_reason: str = ""
    edge_detections: tuple[EdgeDetectionSummary, ...] = ()
    policy_version: int = 0  # the edge's policy in force when it mined the sample
    uplink_bytes: int = 0  # size of the Sample message as received
    thumbnail_jpeg: bytes = b""  # small JPEG of the uploaded image; empty when none could be made


@dataclass(frozen=True, slots=True)
class VerdictRecord:
    """One judged sample as the admin API shows it."""

    sample_id: str
    edge_id: str
    camera_id: str
    frame_seq: int | None
    captured_at: float | None
    received_at: float
    decided_at: float | None
    mined_reason: str
    edge_detections: tuple[EdgeDetectionSummary, ...]
    decision: str
    labels: tuple[str, ...]
    confidence: float | None
    text: str
    backend: str
    model: str
    policy_version: int | None
    origin: str
    origin_detail: str
    uplink_bytes: int | None
    has_thumbnail: bool

    def json_size(self) -> int:
        """Bytes of the record as compact JSON (as a page of the admin API carries it)."""
        return len(json.dumps(self.to_json(), separators=(",", ":")))

    def to_json(self) -> dict[str, Any]:
        """The record as JSON."""
        return {
            "sample_id": self.sample_id,
            "edge_id": self.edge_id,
            "camera_id": self.camera_id,
            "frame_seq": self.frame_seq,
            "captured_at": self.captured_at,
            "received_at": self.received_at,
            "decided_at": self.decided_at,
            "mined_reason": self.mined_reason,
            "edge_detections": [{"label": d.label, "score": d.score} for d in self.edge_detections],
            "decision": self.decision,
            "labels": list(self.labels),
            "confidence": self.confidence,
            "text": self.text,
            "backend": self.backend,
            "model": self.model,
            "policy_version": self.policy_version,
            "origin": self.origin,
            "origin_detail": self.origin_detail,
            "uplink_bytes": self.uplink_bytes,
            "has_thumbnail": self.has_thumbnail,
        }


@dataclass(frozen=True, slots=True)
class VerdictFilter:
    """Which verdicts to list; every field left None matches all."""

    edge_id: str | None = None
    camera_id: str | None = None
    label: str | None = None  # a label the cloud saw or the edge reported
    decision: DecisionName | None = None
    since: float | None = None  # decided_at >= since (unix seconds)
    until: float | None = None  # decided_at < until


@dataclass(frozen=True, slots=True)
class VerdictPage:
    """A page of verdicts, newest decided first, and the cursor of the next page (None: this was the last)."""

    items: list[VerdictRecord]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class UplinkPoint:
    """Sample bytes and counts one edge sent in one time bucket (each sample once: resends are not counted)."""

    edge_id: str
    bucket_start: float
    samples: int
    bytes: int


@dataclass(frozen=True, slots=True)
class DecisionPoint:
    """Verdicts on one edge's forwarded samples in one time bucket, by decision."""

    edge_id: str
    bucket_start: float
    confirmed: int
    rejected: int
    unsure: int


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """One published policy version: the layer it changed, its written settings (None: override removed)."""

    version: int
    scope: ScopeName
    scope_id: str
    settings: dict[str, Any] | None
    created_at: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The record as JSON."""
        return {
            "version": self.version,
            "scope": self.scope,
            "scope_id": self.scope_id,
            "settings": self.settings,
            "created_at": self.created_at,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class EdgeSnapshot:
    """An edge's record (as FleetStatus shows it) at one moment, kept so it outlives a restart."""

    edge_id: str
    taken_at: float
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token an admin issued: who may use it, as what, and the SHA-256 of the token (never the token)."""

    name: str
    role: str
    digest: bytes
    created_at: float
    created_by: str
