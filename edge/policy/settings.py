"""The edge's own view of a policy: what the gate, the miner and the uplink obey.

These models mirror `protos/policy.proto` (edge/convert.py turns one into the other) and carry the
bounds: a policy whose values fall outside them is refused, counted, and the previous one stays.
The defaults are the built-in policy an agent runs before the cloud has spoken (version 0).
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatePolicy(_Strict):
    """Frame differencing: which frames are worth running the detector on."""

    pixel_diff_threshold: int = Field(
        18, ge=1, le=255, description="Grey-level change (0-255) above which a pixel counts as changed."
    )
    changed_area_fraction: float = Field(
        0.0003, ge=0.0, le=1.0, description="Share of changed pixels above which the frame counts as changed."
    )
    downscale_width: int = Field(160, ge=16, le=1920, description="Width the frame is shrunk to before differencing.")


class Band(_Strict):
    """An uncertainty band: scores in [low, high] are too unsure to act on locally."""

    low: float = Field(0.25, ge=0.0, le=1.0, description="Lower bound of the band.")
    high: float = Field(0.6, ge=0.0, le=1.0, description="Upper bound of the band.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low > self.high:
            raise ValueError(f"band low {self.low} is above high {self.high}")
        return self


class MiningPolicy(_Strict):
    """Which hard-example mining strategies run, and their thresholds."""

    uncertainty_band_enabled: bool = Field(True, description="Mine detections whose score is inside their band.")
    bands: dict[str, Band] = Field(default_factory=dict, description="Per-class bands, by label.")
    default_band: Band = Field(default_factory=Band, description="Band of classes without their own.")
    ibt_enabled: bool = Field(False, description="Sedna's image-box-threshold rule.")
    ibt_box_score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="IBT: a box at or below this is unsure.")
    ibt_image_fraction_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="IBT: hard when the unsure share is at least 1 - this."
    )
    cross_entropy_enabled: bool = Field(False, description="Sedna's cross-entropy rule.")
    cross_entropy_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Cross-entropy: hard when confidence falls below this."
    )
    watch_list_enabled: bool = Field(True, description="Always send frames with a watch-listed class.")
    watch_list: tuple[str, ...] = Field((), description="Labels that always go to the cloud.")
    motion_without_detection_enabled: bool = Field(
        True, description="Send frames where the gate saw change but the detector found nothing."
    )
    random_audit_enabled: bool = Field(True, description="Send a random share of frames to measure edge accuracy.")
    random_audit_rate: float = Field(0.01, ge=0.0, le=1.0, description="Share of detected frames audited.")
    resend_interval_s: float = Field(
        2.0, ge=0.0, le=3600.0, description="Same camera, labels and reason: at most one sample per interval."
    )

    def band_for(self, label: str) -> Band:
        """The band of one class."""
        return self.bands.get(label, self.default_band)


class UplinkPolicy(_Strict):
    """How much may be sent, and in what form."""

    budget_bytes_per_s: int = Field(
        256 * 1024, ge=1024, le=1 << 34, description="Token-bucket rate of the uplink in bytes per second."
    )
    burst_bytes: int = Field(1 << 20, ge=1024, le=1 << 36, description="Token-bucket depth in bytes.")
    image_mode: Literal["crop", "full_frame"] = Field("full_frame", description="Send a crop or the whole frame.")
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality of uploaded images.")
    replay_order: Literal["newest_first", "oldest_first"] = Field(
        "newest_first", description="Order of the outbox backlog after an outage."
    )


class ModelRef(_Strict):
    """The detector the policy wants the edge to run."""

    name: str = Field("", description="Model name.")
    version: str = Field("", description="Model version.")
    uri: str = Field("", description="Where to fetch it.")
    sha256: str = Field("", description="Checksum of the ONNX file.")


class EdgePolicy(_Strict):
    """One whole policy as the edge applies it."""

    version: int = Field(0, ge=0, description="Monotonic version; 0 is the built-in default.")
    scope: Literal["builtin", "fleet", "site", "edge"] = Field("builtin", description="Who the policy is for.")
    scope_id: str = Field("", description="Site or edge id for site/edge scopes.")
    gate: GatePolicy = Field(default_factory=GatePolicy, description="Frame gate settings.")
    mining: MiningPolicy = Field(default_factory=MiningPolicy, description="Hard-example mining settings.")
    uplink: UplinkPolicy = Field(default_factory=UplinkPolicy, description="Uplink settings.")
    model: ModelRef | None = Field(None, description="Detector to run, when the policy names one.")
