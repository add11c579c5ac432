"""The columns a verdict row carries besides the serialized verdict: read from the Verdict once, on write."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from cloud.convert import DECISIONS, ORIGINS
from cloud.store.records import SampleMeta
from protos import verdict_pb2

_DECISION_NAMES = {pb: name for name, pb in DECISIONS.items()}
_ORIGIN_NAMES = {pb: name for name, pb in ORIGINS.items()}


@dataclass(frozen=True, slots=True)
class VerdictColumns:
    """The fields of a verdict the admin API filters and shows."""

    decision: str
    labels: tuple[str, ...]
    confidence: float
    text: str
    backend: str
    model: str
    origin: str
    origin_detail: str

    def as_params(self) -> dict[str, Any]:
        """Named SQL parameters (labels as a JSON list)."""
        return {
            "decision": self.decision,
            "labels": json.dumps(list(self.labels)),
            "confidence": self.confidence,
            "text": self.text,
            "backend": self.backend,
            "model": self.model,
            "origin": self.origin,
            "origin_detail": self.origin_detail,
        }


def verdict_columns(blob: bytes) -> VerdictColumns:
    """The columns of a serialized Verdict; an unreadable one reads as unsure with the reason in origin_detail."""
    try:
        verdict = verdict_pb2.Verdict.FromString(blob)
    except DecodeError as err:
        return VerdictColumns("unsure", (), 0.0, "", "", "", "backend_error", f"stored verdict unreadable: {err}")
    model = " ".join(part for part in (verdict.model_name, verdict.model_version) if part)
    return VerdictColumns(
        decision=_DECISION_NAMES.get(verdict.decision, "unsure"),  # UNSPECIFIED reads as unsure (wire contract)
        labels=tuple(sorted({d.label for d in verdict.detections if d.label})),
        confidence=round(float(verdict.confidence), 6),
        text=verdict.text,
        backend=verdict.backend,
        model=model,
        origin=_ORIGIN_NAMES.get(verdict.origin, "backend"),  # UNSPECIFIED reads as backend (wire contract)
        origin_detail=verdict.origin_detail,
    )


def meta_params(meta: SampleMeta) -> dict[str, Any]:
    """Named SQL parameters of a sample's metadata (edge detections as JSON)."""
    return {
        "camera_id": meta.camera_id,
        "frame_seq": meta.frame_seq,
        "captured_at": meta.captured_at,
        "mined_reason": meta.mined_reason,
        "edge_detections": json.dumps([{"label": d.label, "score": d.score} for d in meta.edge_detections]),
        "policy_version": meta.policy_version,
        "uplink_bytes": meta.uplink_bytes,
    }


def all_labels(columns: VerdictColumns, meta: SampleMeta | None) -> set[str]:
    """Labels the label filter finds a sample by: the cloud's and the edge's."""
    edge = {d.label for d in meta.edge_detections if d.label} if meta is not None else set()
    return set(columns.labels) | edge
