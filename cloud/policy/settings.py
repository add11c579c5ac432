"""The cloud's model of the settings a policy carries: what operators write and what the engine signs.

These models mirror `protos/policy.proto` with the same bounds the edge enforces (thresholds in
[0, 1], band low <= high, JPEG quality 10..100, ...). The edge keeps its own copy of them and the
cloud cannot import it: the wire is the contract, so each side validates against it on its own, and
the cloud refuses a policy here that an edge would refuse on arrival.

Overrides (per site, per edge) are the same models read partially: only the fields an operator
wrote (`model_fields_set`) override the policy underneath; `merge` folds them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protos import policy_pb2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateSettings(_Strict):
    """Frame differencing on the edge: which frames are worth running the detector on."""

    pixel_diff_threshold: int = Field(
        18, ge=1, le=255, description="Grey-level change (0-255) above which a pixel counts as changed."
    )
    changed_area_fraction: float = Field(
        0.0003, ge=0.0, le=1.0, description="Share of changed pixels above which the frame counts as changed."
    )
    downscale_width: int = Field(160, ge=16, le=1920, description="Width the frame is shrunk to before differencing.")


class Band(_Strict):
    """An uncertainty band: edge scores in [low, high] are too unsure to act on locally and go up."""

    low: float = Field(0.25, ge=0.0, le=1.0, description="Lower bound of the band; below it a box is noise.")
    high: float = Field(0.6, ge=0.0, le=1.0, description="Upper bound of the band; above it a box is confident.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low > self.high:
            raise ValueError(f"band low {self.low} is above high {self.high} (give both bounds, low <= high)")
        return self


class MiningSettings(_Strict):
    """Which hard-example mining strategies run on the edge, and their thresholds."""

    uncertainty_band_enabled: bool = Field(True, description="Mine detections whose score is inside their band.")
    bands: dict[str, Band] = Field(default_factory=dict, description="Per-class uncertainty bands, by label.")
    default_band: Band = Field(default_factory=Band, description="Band of classes without their own.")
    ibt_enabled: bool = Field(False, description="Sedna's image-box-threshold rule.")
    ibt_box_score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="IBT: a box at or below this is unsure.")
    ibt_image_fraction_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="IBT: the frame is hard when the unsure share of boxes reaches this."
    )
    cross_entropy_enabled: bool = Field(False, description="Sedna's cross-entropy rule.")
    cross_entropy_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Cross-entropy: the frame is hard when the score entropy reaches this."
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

    @model_validator(mode="after")
    def _labelled(self) -> Self:
        if any(not label for label in self.bands):
            raise ValueError("bands: a band has an empty label")
        return self


class UplinkSettings(_Strict):
    """How much the edge may send up, and in what form."""

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

    name: str = Field(..., min_length=1, max_length=256, description="Model name, e.g. yolo-edge-n.")
    version: str = Field(..., min_length=1, max_length=256, description="Model version; edges switch when it differs.")
    uri: str = Field(..., min_length=1, description="Where to fetch the ONNX file (https://, file:// or a path).")
    sha256: str = Field(
        ..., pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256 of the file; edges refuse a mismatch."
    )


class PolicySettings(_Strict):
    """The settings of one policy (everything but version, scope and signature)."""

    gate: GateSettings = Field(default_factory=GateSettings, description="Frame gate thresholds.")
    mining: MiningSettings = Field(default_factory=MiningSettings, description="Hard-example mining strategies.")
    uplink: UplinkSettings = Field(default_factory=UplinkSettings, description="Uplink budget and image settings.")
    model: ModelRef | None = Field(None, description="Detector the edges should run; unset keeps theirs.")


class PolicyValidationError(ValueError):
    """Policy settings outside the bounds; `problems` holds (field path, message) pairs, the message all of them."""

    def __init__(self, where: str, problems: list[tuple[str, str]]) -> None:
        """`where` names the policy (e.g. "fleet policy", "edge gw-1 override")."""
        self.where = where
        self.problems = problems
        super().__init__("; ".join(f"{where}: {path}: {message}" for path, message in problems))


def describe_errors(err: ValidationError) -> list[tuple[str, str]]:
    """(dotted field path, message with the offending value) for each problem of a validation error."""
    problems = []
    for problem in err.errors():
        path = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        given = problem.get("input")
        shown = "" if isinstance(given, dict | list | tuple) or given is None else f" (got {given!r})"
        error = (problem.get("ctx") or {}).get("error")
        message = str(error) if problem["type"] == "value_error" and error is not None else problem["msg"]
        problems.append((path, f"{message}{shown}"))
    return problems


def parse_settings(raw: PolicySettings | Mapping[str, Any] | None, where: str) -> PolicySettings:
    """Validated settings from a model or a mapping (None: all defaults); PolicyValidationError names each field."""
    if type(raw) is PolicySettings:
        return raw
    if isinstance(raw, PolicySettings):
        raw = raw.model_dump(mode="json")  # an override read whole: its unwritten fields take their defaults
    if raw is not None and not isinstance(raw, Mapping):
        raise PolicyValidationError(
            where, [("(top level)", f"expected a mapping of settings, got {type(raw).__name__}")]
        )
    try:
        return PolicySettings.model_validate(dict(raw or {}))
    except ValidationError as err:
        raise PolicyValidationError(where, describe_errors(err)) from err


def overrides_of(settings: PolicySettings) -> dict[str, Any]:
    """Only the fields an operator wrote, nested (what an override changes)."""
    return settings.model_dump(exclude_unset=True, mode="json")


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge(base: PolicySettings, *layers: PolicySettings, where: str) -> PolicySettings:
    """`base` with each layer's written fields on top, in order, validated as a whole (PolicyValidationError)."""
    raw = base.model_dump(mode="json")
    for layer in layers:
        raw = _deep_merge(raw, overrides_of(layer))
    return parse_settings(raw, where)


_IMAGE_MODES: dict[str, policy_pb2.UplinkImageMode.ValueType] = {
    "crop": policy_pb2.UPLINK_IMAGE_MODE_CROP,
    "full_frame": policy_pb2.UPLINK_IMAGE_MODE_FULL_FRAME,
}
_REPLAY_ORDERS: dict[str, policy_pb2.ReplayOrder.ValueType] = {
    "newest_first": policy_pb2.REPLAY_ORDER_NEWEST_FIRST,
    "oldest_first": policy_pb2.REPLAY_ORDER_OLDEST_FIRST,
}


def settings_to_pb(settings: PolicySettings, policy: policy_pb2.Policy) -> None:
    """Write every section of `settings` into `policy` (all sections set, bands sorted by label)."""
    gate, mining, uplink = settings.gate, settings.mining, settings.uplink
    policy.gate.CopyFrom(
        policy_pb2.GateSettings(
            pixel_diff_threshold=gate.pixel_diff_threshold,
            changed_area_fraction=gate.changed_area_fraction,
            downscale_width=gate.downscale_width,
        )
    )
    policy.mining.CopyFrom(
        policy_pb2.MiningSettings(
            uncertainty_band_enabled=mining.uncertainty_band_enabled,
            uncertainty_bands=[
                policy_pb2.UncertaintyBand(label=label, low=band.low, high=band.high)
                for label, band in sorted(mining.bands.items())
            ],
            default_uncertainty_band=policy_pb2.UncertaintyBand(
                low=mining.default_band.low, high=mining.default_band.high
            ),
            ibt_enabled=mining.ibt_enabled,
            ibt_box_score_threshold=mining.ibt_box_score_threshold,
            ibt_image_fraction_threshold=mining.ibt_image_fraction_threshold,
            cross_entropy_enabled=mining.cross_entropy_enabled,
            cross_entropy_threshold=mining.cross_entropy_threshold,
            watch_list_enabled=mining.watch_list_enabled,
            watch_list_labels=list(mining.watch_list),
            motion_without_detection_enabled=mining.motion_without_detection_enabled,
            random_audit_enabled=mining.random_audit_enabled,
            random_audit_rate=mining.random_audit_rate,
            resend_interval_s=mining.resend_interval_s,
        )
    )
    policy.uplink.CopyFrom(
        policy_pb2.UplinkSettings(
            budget_bytes_per_s=uplink.budget_bytes_per_s,
            burst_bytes=uplink.burst_bytes,
            image_mode=_IMAGE_MODES[uplink.image_mode],
            jpeg_quality=uplink.jpeg_quality,
            replay_order=_REPLAY_ORDERS[uplink.replay_order],
        )
    )
    if settings.model is not None:
        model = settings.model
        policy.model.CopyFrom(
            policy_pb2.ModelRef(name=model.name, version=model.version, uri=model.uri, sha256=model.sha256)
        )


class PolicyOverride(PolicySettings):
    """Settings of a site or edge override: only the fields written override the policy underneath.

    A band is written whole (low and high): a lone bound would be checked against the built-in
    other bound, not the one of the policy underneath.
    """

    @field_validator("mining")
    @classmethod
    def _whole_bands(cls, mining: MiningSettings) -> MiningSettings:
        written = mining.model_dump(exclude_unset=True)
        named = [("default_band", written.get("default_band"))]
        named += [(f"bands.{label}", band) for label, band in written.get("bands", {}).items()]
        for path, band in named:
            if band is not None and set(band) != {"low", "high"}:
                raise ValueError(f"{path}: an override gives a band whole (both low and high)")
        return mining


def parse_override(raw: PolicySettings | Mapping[str, Any] | None, where: str) -> PolicyOverride:
    """A validated override from a model or a mapping; PolicyValidationError names each field."""
    if isinstance(raw, PolicyOverride):
        return raw
    if isinstance(raw, PolicySettings):
        raw = overrides_of(raw)
    if raw is not None and not isinstance(raw, Mapping):
        raise PolicyValidationError(
            where, [("(top level)", f"expected a mapping of settings, got {type(raw).__name__}")]
        )
    try:
        return PolicyOverride.model_validate(dict(raw or {}))
    except ValidationError as err:
        raise PolicyValidationError(where, describe_errors(err)) from err
