"""The closed loop's settings (`policy.closed_loop` in cloud.yaml) and its metrics."""

from __future__ import annotations

from typing import Self

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ClosedLoopConfig(BaseModel):
    """The `policy.closed_loop` section of cloud.yaml: targets, window, and how eagerly bands move."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Move each edge's uncertainty bands from the cloud's verdicts.")
    target_recall: float = Field(
        0.95, gt=0.0, le=1.0, description="Share of cloud-confirmed objects the edge must not drop (below low)."
    )
    target_precision: float = Field(
        0.95, gt=0.0, le=1.0, description="Share of the edge's local accepts (above high) the cloud would confirm."
    )
    window_pairs: int = Field(2000, ge=10, le=1_000_000, description="Newest pairs kept per edge and class.")
    window_age_s: float = Field(
        86_400.0, gt=0.0, le=90 * 86_400.0, description="Pairs older than this (seconds) leave the window."
    )
    min_pairs: int = Field(200, ge=1, le=1_000_000, description="Pairs a class needs in its window before it moves.")
    min_audit_pairs: int = Field(
        20, ge=0, le=1_000_000, description="Random-audit pairs a class needs: only they show scores outside the band."
    )
    hysteresis: float = Field(
        0.02, ge=0.0, le=0.5, description="A bound moves only when its optimum is further than this from it."
    )
    min_interval_s: float = Field(
        600.0, ge=0.0, le=30 * 86_400.0, description="Shortest time between two band moves of one edge."
    )
    evaluate_every_pairs: int = Field(
        100, ge=1, le=1_000_000, description="An edge's bands are evaluated after this many new pairs from it."
    )
    match_iou: float = Field(
        0.3, gt=0.0, le=1.0, description="IoU at which an object the cloud found confirms an edge box of its label."
    )
    flush_interval_s: float = Field(
        5.0, gt=0.0, le=3600.0, description="New pairs are written to SQLite at least this often (seconds)."
    )
    max_unsaved_pairs: int = Field(
        50_000, ge=100, le=10_000_000, description="Pairs waiting to be written; beyond, the oldest are not saved."
    )
    history_per_key: int = Field(100, ge=1, le=100_000, description="Band moves remembered per edge and class.")
    motion_enabled: bool = Field(
        True, description="Also size each camera's motion rule (motion_min_area_fraction) from its motion verdicts."
    )
    motion_window: int = Field(200, ge=10, le=100_000, description="Judged motion samples kept per camera.")
    motion_min_samples: int = Field(
        20, ge=1, le=100_000, description="Judged motion samples a camera needs before its motion rule moves."
    )
    motion_reject_share: float = Field(
        0.8, gt=0.5, le=1.0, description="Share of motion samples the cloud rejects above which the threshold rises."
    )
    motion_max_area: float = Field(
        0.05, gt=0.0, le=1.0, description="Highest motion_min_area_fraction the loop sets (share of the frame)."
    )
    audit_enabled: bool = Field(
        True, description="Also size each camera's random_audit_rate from how often audits contradict the edge."
    )
    audit_window: int = Field(300, ge=10, le=100_000, description="Audited local decisions kept per camera.")
    audit_min_samples: int = Field(
        30, ge=1, le=100_000, description="Audited local decisions a camera needs before its audit rate moves."
    )
    audit_min_rate: float = Field(0.005, ge=0.0, le=1.0, description="Lowest random_audit_rate the loop sets.")
    audit_max_rate: float = Field(0.2, gt=0.0, le=1.0, description="Highest random_audit_rate the loop sets.")
    watch_enabled: bool = Field(
        True, description="Also size each camera's watch_reask_interval_s from how often re-asks change the answer."
    )
    watch_window: int = Field(100, ge=5, le=100_000, description="Re-asks of watched objects kept per camera.")
    watch_min_samples: int = Field(
        12, ge=1, le=100_000, description="Re-asks a camera needs before its watch re-ask interval moves."
    )
    watch_changed_share: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of re-asks that change the answer above which they come sooner."
    )
    watch_min_interval_s: float = Field(
        10.0, gt=0.0, le=86_400.0, description="Shortest watch_reask_interval_s the loop sets (seconds)."
    )
    watch_max_interval_s: float = Field(
        3600.0, gt=0.0, le=86_400.0, description="Longest watch_reask_interval_s the loop sets (seconds)."
    )
    tracks_remembered: int = Field(
        50_000,
        ge=100,
        le=10_000_000,
        description="Watched objects whose last answer is kept (to see re-asks change it).",
    )

    @model_validator(mode="after")
    def _reachable(self) -> Self:
        if self.min_pairs > self.window_pairs or self.min_audit_pairs > self.window_pairs:
            raise ValueError(
                f"min_pairs ({self.min_pairs}) and min_audit_pairs ({self.min_audit_pairs}) must not exceed "
                f"window_pairs ({self.window_pairs}), or no band would ever move"
            )
        for name, needed, window in (
            ("motion", self.motion_min_samples, self.motion_window),
            ("audit", self.audit_min_samples, self.audit_window),
            ("watch", self.watch_min_samples, self.watch_window),
        ):
            if needed > window:
                raise ValueError(f"{name}_min_samples ({needed}) must not exceed {name}_window ({window})")
        if self.audit_min_rate > self.audit_max_rate:
            raise ValueError(f"audit_min_rate ({self.audit_min_rate}) is above audit_max_rate ({self.audit_max_rate})")
        if self.watch_min_interval_s > self.watch_max_interval_s:
            raise ValueError(
                f"watch_min_interval_s ({self.watch_min_interval_s}) is above "
                f"watch_max_interval_s ({self.watch_max_interval_s})"
            )
        return self


class BandMetrics:
    """The closed loop's metrics, on the cloud service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register every metric on `registry`."""
        by_key = ["edge_id", "label"]
        self.moves = Counter("edgeglm_cloud_band_moves", "Bands moved by the closed loop.", by_key, registry=registry)
        self.low = Gauge("edgeglm_cloud_band_low", "Band low in force, by edge and class.", by_key, registry=registry)
        self.high = Gauge(
            "edgeglm_cloud_band_high", "Band high in force, by edge and class.", by_key, registry=registry
        )
        self.pairs = Counter(
            "edgeglm_cloud_closed_loop_pairs",
            "Score pairs taken from verdicts, by decision.",
            ["decision"],
            registry=registry,
        )
        self.dropped = Counter(
            "edgeglm_cloud_closed_loop_pairs_dropped",
            "Edge detections not used, by reason (unsure, no_audit_rate, not_saved).",
            ["reason"],
            registry=registry,
        )
        self.errors = Counter(
            "edgeglm_cloud_closed_loop_errors",
            "Closed-loop failures, by stage (observe, flush, evaluate, restore).",
            ["stage"],
            registry=registry,
        )
