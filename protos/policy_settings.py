"""The policy contract's Python side: the settings a policy carries, their bounds and meanings, and the wire.

`protos/policy.proto` and these models say the same thing: every field's description here is the
comment on the proto field of the same name, word for word, and a range written in it, such as
"(0-1)", is the field's `ge`/`le` (tests/unit/test_policy_contract.py holds them to it). The cloud
validates what it signs against these models and the edge validates what it applies against them,
so the cloud refuses exactly what an edge would refuse on arrival.

The meanings of Sedna's rules are Sedna's own (kubeedge/sedna,
lib/sedna/algorithms/hard_example_mining/hard_example_mining.py): IBT counts the boxes scoring at
or below threshold_box and calls the image hard when their share is at least 1 - threshold_img;
cross-entropy calls it hard when 1 + sum(p log p) / log(n) is below threshold_cross_entropy.
`edge/mine/strategies/` computes them.

Floats read from the wire go through `protos.floats.f32`, so settings survive a round trip unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protos import policy_pb2
from protos.floats import f32

_E = TypeVar("_E")
# The highest policy version either side accepts: 2^53 - 1, exact in every JSON reader; one version a
# second would take 285 million years to reach it. A policy claiming more (a forged or corrupt state)
# would otherwise be applied and make every later, real, policy look stale.
MAX_POLICY_VERSION = (1 << 53) - 1
ImageModeName = Literal["crop", "full_frame"]
ReplayOrderName = Literal["newest_first", "oldest_first"]
RuleSeverityName = Literal["info", "warning", "critical"]
RULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_WATCH_RULES = 32  # per policy; a sample asks at most this many (cloud.convert bounds it too)
MAX_RULE_TEXT = 200


class InvalidPolicyError(ValueError):
    """A policy whose values break the contract; the message names each field path and its value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateSettings(_Strict):
    """Motion/scene-change gate: frames with too little change skip detection."""

    pixel_diff_threshold: int = Field(
        18, ge=1, le=255, description="Grey-level difference (1-255) above which a pixel counts as changed."
    )
    changed_area_fraction: float = Field(
        0.0003,
        ge=0.0,
        le=1.0,
        description="Fraction (0-1) of changed pixels above which the frame goes on to detection.",
    )
    downscale_width: int = Field(
        160,
        ge=16,
        le=1920,
        description="Width in pixels (16-1920) the frame is downscaled to (aspect kept) before differencing.",
    )


class Band(_Strict):
    """Scores of one class in [low, high] are uncertain and mined."""

    low: float = Field(
        0.25, ge=0.0, le=1.0, description="Lowest uncertain score (0-1); below it the detection is dropped as noise."
    )
    high: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="Highest uncertain score (0-1); above it the detection is confident and handled locally.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low > self.high:
            raise ValueError(f"band low {self.low} is above high {self.high} (give both bounds, low <= high)")
        return self


class CameraMining(_Strict):
    """Mining values for one camera of the edge (the closed loop sizes them from that camera's verdicts)."""

    motion_min_area_fraction: float | None = Field(
        None, ge=0.0, le=1.0, description="This camera's motion_min_area_fraction (0-1)."
    )
    random_audit_rate: float | None = Field(None, ge=0.0, le=1.0, description="This camera's random_audit_rate (0-1).")
    watch_reask_interval_s: float | None = Field(
        None, ge=0.0, le=86_400.0, description="This camera's watch_reask_interval_s (0-86400)."
    )


class ZonePoint(_Strict):
    """A point of a zone, as shares of the frame's width and height from its top-left corner."""

    x: float = Field(..., ge=0.0, le=1.0, description="Share (0-1) of the frame's width from its left edge.")
    y: float = Field(..., ge=0.0, le=1.0, description="Share (0-1) of the frame's height from its top edge.")


class WatchRule(_Strict):
    """A rule in plain words, e.g. "a person climbing the fence": which objects are its candidates, and the
    text the cloud's vision-language model is asked about each of them."""

    rule_id: str = Field(
        ...,
        pattern=RULE_ID_PATTERN,
        description="Stable id of the rule, named by samples, verdicts and events: a letter or digit, then up to 63 "
        "letters, digits, '.', '_' or '-'.",
    )
    text: str = Field(
        ...,
        min_length=1,
        max_length=MAX_RULE_TEXT,
        description="What to look for, in plain words, as the model is asked it: one line of at most 200 characters.",
    )
    labels: tuple[str, ...] = Field(
        ...,
        min_length=1,
        max_length=16,
        description="Labels of the edge detector a tracked object must carry to be a candidate (one to 16).",
    )
    camera_ids: tuple[str, ...] = Field(
        (),
        max_length=256,
        description="Cameras the rule watches, as the edge's config names them; empty: every camera.",
    )
    zone: tuple[ZonePoint, ...] = Field(
        (),
        max_length=32,
        description="Polygon of 3 to 32 points the bottom centre of a candidate's box must lie in; empty: the whole "
        "frame.",
    )
    severity: RuleSeverityName = Field("warning", description="How much a match matters.")

    @model_validator(mode="after")
    def _well_formed(self) -> Self:
        if not self.text.strip() or any(not ch.isprintable() for ch in self.text):
            raise ValueError(f"rule {self.rule_id}: text must be one line of printable characters, not blank")
        if any(not label for label in self.labels) or any(not camera for camera in self.camera_ids):
            raise ValueError(f"rule {self.rule_id}: a label or camera id is empty")
        if 0 < len(self.zone) < 3:
            raise ValueError(f"rule {self.rule_id}: a zone needs at least 3 points (it has {len(self.zone)})")
        return self

    def watches(self, camera_id: str) -> bool:
        """Whether the rule applies on `camera_id`."""
        return not self.camera_ids or camera_id in self.camera_ids

    def is_candidate(self, label: str, box: tuple[float, float, float, float], frame_size: tuple[int, int]) -> bool:
        """Whether an object of `label` at `box` (pixels of a `frame_size` (width, height) frame) is a candidate.

        With a zone, the bottom centre of the box (where the object stands) must lie inside it; a frame of
        unknown size is inside no zone.
        """
        if label not in self.labels:
            return False
        if not self.zone:
            return True
        width, height = frame_size
        if width <= 0 or height <= 0:
            return False
        return _inside(((box[0] + box[2]) / 2 / width, box[3] / height), self.zone)


def _inside(point: tuple[float, float], polygon: Sequence[ZonePoint]) -> bool:
    """Even-odd rule: whether `point` lies inside `polygon` (a point on an edge may fall either way).

    Written out rather than taken from shapely or matplotlib: the edge image carries neither, and the
    test is ten lines.
    """
    x, y = point
    inside = False
    previous = polygon[-1]
    for current in polygon:
        if (current.y > y) != (previous.y > y):
            crossing = previous.x + (y - previous.y) * (current.x - previous.x) / (current.y - previous.y)
            if x < crossing:
                inside = not inside
        previous = current
    return inside


class MiningSettings(_Strict):
    """Which hard-example mining strategies run on the edge, and their thresholds."""

    uncertainty_band_enabled: bool = Field(
        True, description="Mine detections whose score falls in their class's uncertainty band."
    )
    bands: dict[str, Band] = Field(default_factory=dict, description="Per-class bands, at most one per label.")
    default_band: Band = Field(
        default_factory=Band, description="Band for classes without a band of their own; its label is ignored."
    )
    ibt_enabled: bool = Field(False, description="Run Sedna's image-box-threshold (IBT) rule.")
    ibt_box_score_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="IBT, Sedna's threshold_box (0-1): a box scoring at or below this is unsure.",
    )
    ibt_image_fraction_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="IBT, Sedna's threshold_img (0-1): the frame is hard when the share of unsure boxes is at "
        "least 1 minus this; raising it mines more frames.",
    )
    cross_entropy_enabled: bool = Field(False, description="Run Sedna's cross-entropy rule.")
    cross_entropy_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Cross-entropy, Sedna's threshold_cross_entropy (0-1): the frame is hard when the confidence "
        "of its box scores (1 minus their normalised entropy) is below this; raising it mines more frames.",
    )
    watch_list_enabled: bool = Field(True, description="Always send frames with a watch-listed class.")
    watch_list: tuple[str, ...] = Field(
        (), description="Class labels that always go up when detected at or above their band's low."
    )
    motion_without_detection_enabled: bool = Field(
        True, description="Send frames where the gate saw change but the detector found nothing."
    )
    random_audit_enabled: bool = Field(
        True, description="Send a random share of frames regardless of the other strategies, to measure edge accuracy."
    )
    random_audit_rate: float = Field(
        0.01, ge=0.0, le=1.0, description="Random audit: fraction (0-1) of detected frames sent."
    )
    resend_interval_s: float = Field(
        2.0,
        ge=0.0,
        le=3600.0,
        description="Seconds (0-3600) before a question is asked again. An edge asking per tracked object: an "
        "object whose answer was unsure asks again after this (0 = never). An edge asking per frame: the same "
        "camera does not send the same labels for the same reason within it (0 = every frame). Audits are exempt.",
    )
    motion_min_area_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Motion without detection fires only when the gate's changed region covers at least this share "
        "(0-1) of the frame (0 = any motion); the closed loop raises it for an edge whose motion samples the cloud "
        "keeps rejecting.",
    )

    watch_reask_interval_s: float = Field(
        0.0,
        ge=0.0,
        le=86_400.0,
        description="Seconds (0-86400) after which an object of a watched label that the cloud confirmed is asked "
        "about again, so a long stay is checked anew (0 = never: one question per object). An unsure answer asks "
        "again after resend_interval_s as for every object.",
    )
    cameras: dict[str, CameraMining] = Field(
        default_factory=dict,
        description="Per-camera values of the rules the closed loop sizes for each camera, at most one entry per "
        "camera; what an entry leaves unset keeps the value above.",
    )
    watch_rules: tuple[WatchRule, ...] = Field(
        (),
        max_length=MAX_WATCH_RULES,
        description="Rules in plain words that the cloud's vision-language model judges (at most 32, each rule_id "
        "once): a tracked object that is a candidate of a rule asks the cloud about it, once per object and rule "
        "(again after resend_interval_s while the answer is unsure); a match is an event.",
    )

    @model_validator(mode="after")
    def _labelled(self) -> Self:
        if any(not label for label in self.bands):
            raise ValueError("bands: a band has an empty label")
        if any(not camera for camera in self.cameras):
            raise ValueError("cameras: an entry has an empty camera id")
        ids = [rule.rule_id for rule in self.watch_rules]
        if len(set(ids)) != len(ids):
            twice = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
            raise ValueError(f"watch_rules: rule_id {', '.join(twice)} appears more than once")
        return self

    def rule(self, rule_id: str) -> WatchRule | None:
        """The watch rule of that id, if the settings have it."""
        return next((rule for rule in self.watch_rules if rule.rule_id == rule_id), None)

    def band_for(self, label: str) -> Band:
        """The band of one class."""
        return self.bands.get(label, self.default_band)

    def for_camera(self, camera_id: str) -> MiningSettings:
        """These settings with one camera's own values (`cameras`) in place of the edge-wide ones."""
        entry = self.cameras.get(camera_id)
        written: dict[str, Any] = {}
        if entry is not None:
            written = {name: value for name, value in entry.model_dump().items() if value is not None}
        rules = tuple(rule for rule in self.watch_rules if rule.watches(camera_id))
        if rules != self.watch_rules:
            written["watch_rules"] = rules
        return self.model_copy(update=written) if written else self


class UplinkSettings(_Strict):
    """How much and what the edge may send up."""

    budget_bytes_per_s: int = Field(
        256 * 1024,
        ge=1024,
        le=1 << 34,
        description="Token-bucket refill rate: sustained uplink budget in bytes per second.",
    )
    burst_bytes: int = Field(
        1 << 20, ge=1024, le=1 << 36, description="Token-bucket size: the most bytes that may go up in one burst."
    )
    image_mode: ImageModeName = Field("full_frame", description="Crops or full frames.")
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality (10-100) of uploaded images.")
    replay_order: ReplayOrderName = Field("newest_first", description="Outbox replay order after an outage.")


class ModelRef(_Strict):
    """A model the edge should run, fetched and checked before it is swapped in."""

    name: str = Field(..., min_length=1, max_length=256, description='Model name, e.g. "yolo-edge-n".')
    version: str = Field(
        ...,
        min_length=1,
        max_length=256,
        description="Model version; the edge switches when it differs from the running one.",
    )
    uri: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        pattern=r"^(edgeglm://|file:///)",
        description=(
            "Where to fetch the ONNX file: edgeglm://<name>/<version> from the cloud's model registry over the "
            "edge's own authenticated gRPC uplink (FetchModel), or file:///path on the edge's disk."
        ),
    )
    sha256: str = Field(
        ...,
        pattern=r"^[0-9a-f]{64}$",
        description="Lower-case hex SHA-256 of the file; the edge refuses a download that does not match.",
    )
    size_bytes: int = Field(
        ...,
        gt=0,
        le=2**31,
        description="Size of the file in bytes; the edge refuses a download of any other size.",
    )


class PolicySettings(_Strict):
    """The settings of one policy: everything but version, scope and signature."""

    gate: GateSettings = Field(default_factory=GateSettings, description="Frame-change gate thresholds.")
    mining: MiningSettings = Field(
        default_factory=MiningSettings,
        description="Hard-example mining strategies and thresholds, uncertainty bands included.",
    )
    uplink: UplinkSettings = Field(default_factory=UplinkSettings, description="Uplink budget and image settings.")
    model: ModelRef | None = Field(
        None, description="The edge detector model to run; unset means the model in the edge's own config."
    )


# ---------------------------------------------------------------- to and from protobuf

_IMAGE_MODE_TO_PB: dict[ImageModeName, policy_pb2.UplinkImageMode.ValueType] = {
    "crop": policy_pb2.UPLINK_IMAGE_MODE_CROP,
    "full_frame": policy_pb2.UPLINK_IMAGE_MODE_FULL_FRAME,
}
_IMAGE_MODE_FROM_PB = {pb: name for name, pb in _IMAGE_MODE_TO_PB.items()}
_REPLAY_ORDER_TO_PB: dict[ReplayOrderName, policy_pb2.ReplayOrder.ValueType] = {
    "newest_first": policy_pb2.REPLAY_ORDER_NEWEST_FIRST,
    "oldest_first": policy_pb2.REPLAY_ORDER_OLDEST_FIRST,
}
_REPLAY_ORDER_FROM_PB = {pb: name for name, pb in _REPLAY_ORDER_TO_PB.items()}
_SEVERITY_TO_PB: dict[RuleSeverityName, policy_pb2.RuleSeverity.ValueType] = {
    "info": policy_pb2.RULE_SEVERITY_INFO,
    "warning": policy_pb2.RULE_SEVERITY_WARNING,
    "critical": policy_pb2.RULE_SEVERITY_CRITICAL,
}
_SEVERITY_FROM_PB = {pb: name for name, pb in _SEVERITY_TO_PB.items()}


def _rule_to_pb(rule: WatchRule) -> policy_pb2.WatchRule:
    return policy_pb2.WatchRule(
        rule_id=rule.rule_id,
        text=rule.text,
        labels=list(rule.labels),
        camera_ids=list(rule.camera_ids),
        zone=[policy_pb2.ZonePoint(x=point.x, y=point.y) for point in rule.zone],
        severity=_SEVERITY_TO_PB[rule.severity],
    )


def _rule_from_pb(rule: policy_pb2.WatchRule, where: str) -> dict[str, Any]:
    severity = _SEVERITY_FROM_PB.get(rule.severity)
    if severity is None:
        raise InvalidPolicyError(f"{where}: mining.watch_rules.{rule.rule_id or '<no id>'}: severity is not set")
    return {
        "rule_id": rule.rule_id,
        "text": rule.text,
        "labels": tuple(rule.labels),
        "camera_ids": tuple(rule.camera_ids),
        "zone": tuple({"x": f32(point.x), "y": f32(point.y)} for point in rule.zone),
        "severity": severity,
    }


def settings_to_pb(settings: PolicySettings, policy: policy_pb2.Policy) -> None:
    """Write every section of `settings` into `policy` (bands sorted by label, so equal settings give equal bytes)."""
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
            motion_min_area_fraction=mining.motion_min_area_fraction,
            watch_reask_interval_s=mining.watch_reask_interval_s,
            cameras=[
                policy_pb2.CameraMining(camera_id=camera, **entry.model_dump(exclude_none=True))
                for camera, entry in sorted(mining.cameras.items())
            ],
            watch_rules=[_rule_to_pb(rule) for rule in mining.watch_rules],
        )
    )
    policy.uplink.CopyFrom(
        policy_pb2.UplinkSettings(
            budget_bytes_per_s=uplink.budget_bytes_per_s,
            burst_bytes=uplink.burst_bytes,
            image_mode=_IMAGE_MODE_TO_PB[uplink.image_mode],
            jpeg_quality=uplink.jpeg_quality,
            replay_order=_REPLAY_ORDER_TO_PB[uplink.replay_order],
        )
    )
    if settings.model is not None:
        model = settings.model
        policy.model.CopyFrom(
            policy_pb2.ModelRef(
                name=model.name, version=model.version, uri=model.uri, sha256=model.sha256, size_bytes=model.size_bytes
            )
        )


def settings_fields_from_pb(pb: policy_pb2.Policy, base: PolicySettings, where: str) -> dict[str, Any]:
    """The gate/mining/uplink/model fields of a wire policy, unvalidated, for a model built on `PolicySettings`.

    What the wire leaves unset keeps the value of `base` (the settings in force): a missing section or
    default band, an UNSPECIFIED image mode or replay order. An unset model is none (the edge runs its
    configured model): the cloud signs every policy whole, so a model it leaves out is one it dropped. Raises
    `InvalidPolicyError` (prefixed with `where`) for what no model can say: a band without a label or a
    label given twice.
    """
    return {
        "gate": _gate_from_pb(pb.gate) if pb.HasField("gate") else base.gate.model_dump(),
        "mining": _mining_from_pb(pb.mining, base, where) if pb.HasField("mining") else base.mining.model_dump(),
        "uplink": _uplink_from_pb(pb.uplink, base) if pb.HasField("uplink") else base.uplink.model_dump(),
        "model": _model_from_pb(pb.model) if pb.HasField("model") else None,
    }


def _gate_from_pb(gate: policy_pb2.GateSettings) -> dict[str, Any]:
    return {
        "pixel_diff_threshold": gate.pixel_diff_threshold,
        "changed_area_fraction": f32(gate.changed_area_fraction),
        "downscale_width": gate.downscale_width,
    }


def _band_from_pb(band: policy_pb2.UncertaintyBand) -> dict[str, float]:
    return {"low": f32(band.low), "high": f32(band.high)}


def _keyed(entries: Iterable[_E], key: Callable[[_E], str], path: str, noun: str, where: str) -> dict[str, _E]:
    """Repeated wire entries by their key (`noun`); an empty or repeated key is refused by name."""
    keyed: dict[str, _E] = {}
    for entry in entries:
        name = key(entry)
        if not name:
            raise InvalidPolicyError(f"{where}: mining.{path}: an entry has an empty {noun}")
        if name in keyed:
            raise InvalidPolicyError(f"{where}: mining.{path}.{name}: {noun} appears more than once")
        keyed[name] = entry
    return keyed


def _mining_from_pb(mining: policy_pb2.MiningSettings, base: PolicySettings, where: str) -> dict[str, Any]:
    by_label = _keyed(mining.uncertainty_bands, lambda band: band.label, "bands", "label", where)
    bands = {label: _band_from_pb(band) for label, band in by_label.items()}
    by_camera = _keyed(mining.cameras, lambda entry: entry.camera_id, "cameras", "camera id", where)
    cameras = {
        camera: {
            name: f32(getattr(entry, name))
            for name in CameraMining.model_fields
            if entry.HasField(name)  # type: ignore[arg-type]  # the model's fields are the message's optionals
        }
        for camera, entry in by_camera.items()
    }
    default_band = (
        _band_from_pb(mining.default_uncertainty_band)
        if mining.HasField("default_uncertainty_band")
        else base.mining.default_band.model_dump()
    )
    return {
        "uncertainty_band_enabled": mining.uncertainty_band_enabled,
        "bands": bands,
        "default_band": default_band,
        "ibt_enabled": mining.ibt_enabled,
        "ibt_box_score_threshold": f32(mining.ibt_box_score_threshold),
        "ibt_image_fraction_threshold": f32(mining.ibt_image_fraction_threshold),
        "cross_entropy_enabled": mining.cross_entropy_enabled,
        "cross_entropy_threshold": f32(mining.cross_entropy_threshold),
        "watch_list_enabled": mining.watch_list_enabled,
        "watch_list": tuple(mining.watch_list_labels),
        "motion_without_detection_enabled": mining.motion_without_detection_enabled,
        "random_audit_enabled": mining.random_audit_enabled,
        "random_audit_rate": f32(mining.random_audit_rate),
        "resend_interval_s": f32(mining.resend_interval_s),
        "motion_min_area_fraction": f32(mining.motion_min_area_fraction),
        "watch_reask_interval_s": f32(mining.watch_reask_interval_s),
        "cameras": cameras,
        "watch_rules": tuple(_rule_from_pb(rule, where) for rule in mining.watch_rules),
    }


def _uplink_from_pb(uplink: policy_pb2.UplinkSettings, base: PolicySettings) -> dict[str, Any]:
    return {
        "budget_bytes_per_s": uplink.budget_bytes_per_s,
        "burst_bytes": uplink.burst_bytes,
        "image_mode": _IMAGE_MODE_FROM_PB.get(uplink.image_mode, base.uplink.image_mode),
        "jpeg_quality": uplink.jpeg_quality,
        "replay_order": _REPLAY_ORDER_FROM_PB.get(uplink.replay_order, base.uplink.replay_order),
    }


def _model_from_pb(model: policy_pb2.ModelRef) -> dict[str, str | int]:
    return {
        "name": model.name,
        "version": model.version,
        "uri": model.uri,
        "sha256": model.sha256,
        "size_bytes": model.size_bytes,
    }
