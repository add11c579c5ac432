"""The edge's one conversion module between protobuf messages and the edge's own types.

Policies (`policy_pb2.Policy` <-> `EdgePolicy`), detections, the samples the edge sends up, the
verdicts that come down, and the JPEG a sample carries. Protobuf floats are 32-bit: values read from
the wire are turned back into the shortest decimal that names the same float32 (0.35, not
0.3499999940395355), so a policy survives a round trip unchanged and logs read as people wrote them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from numpy.typing import NDArray
from pydantic import ValidationError

from common.config import error_lines
from edge.detect import Detection
from edge.policy.settings import EdgePolicy
from protos import policy_pb2, sample_pb2, verdict_pb2

PolicyScopeName = Literal["builtin", "fleet", "site", "edge"]
DecisionName = Literal["confirmed", "rejected", "unsure"]
OriginName = Literal["backend", "timeout", "backend_error", "edge_fallback"]
ImageMode = Literal["crop", "full_frame"]

# "builtin" is the edge's own default and never travels: it goes out as UNSPECIFIED, which an edge refuses.
_SCOPE_TO_PB: dict[PolicyScopeName, policy_pb2.PolicyScope.ValueType] = {
    "builtin": policy_pb2.POLICY_SCOPE_UNSPECIFIED,
    "fleet": policy_pb2.POLICY_SCOPE_FLEET,
    "site": policy_pb2.POLICY_SCOPE_SITE,
    "edge": policy_pb2.POLICY_SCOPE_EDGE,
}
_SCOPE_FROM_PB = {pb: name for name, pb in _SCOPE_TO_PB.items() if name != "builtin"}
_IMAGE_MODE_TO_PB: dict[str, policy_pb2.UplinkImageMode.ValueType] = {
    "crop": policy_pb2.UPLINK_IMAGE_MODE_CROP,
    "full_frame": policy_pb2.UPLINK_IMAGE_MODE_FULL_FRAME,
}
_IMAGE_MODE_FROM_PB = {pb: name for name, pb in _IMAGE_MODE_TO_PB.items()}
_REPLAY_ORDER_TO_PB: dict[str, policy_pb2.ReplayOrder.ValueType] = {
    "newest_first": policy_pb2.REPLAY_ORDER_NEWEST_FIRST,
    "oldest_first": policy_pb2.REPLAY_ORDER_OLDEST_FIRST,
}
_REPLAY_ORDER_FROM_PB = {pb: name for name, pb in _REPLAY_ORDER_TO_PB.items()}
MINED_REASONS: dict[str, sample_pb2.MinedReason.ValueType] = {
    "uncertainty_band": sample_pb2.MINED_REASON_UNCERTAINTY_BAND,
    "ibt": sample_pb2.MINED_REASON_IBT,
    "cross_entropy": sample_pb2.MINED_REASON_CROSS_ENTROPY,
    "watch_list": sample_pb2.MINED_REASON_WATCH_LIST,
    "motion_without_detection": sample_pb2.MINED_REASON_MOTION_WITHOUT_DETECTION,
    "random_audit": sample_pb2.MINED_REASON_RANDOM_AUDIT,
}
_DECISIONS: dict[int, DecisionName] = {
    verdict_pb2.DECISION_CONFIRMED: "confirmed",
    verdict_pb2.DECISION_REJECTED: "rejected",
    verdict_pb2.DECISION_UNSURE: "unsure",
}
_ORIGINS: dict[int, OriginName] = {
    verdict_pb2.VERDICT_ORIGIN_BACKEND: "backend",
    verdict_pb2.VERDICT_ORIGIN_TIMEOUT: "timeout",
    verdict_pb2.VERDICT_ORIGIN_BACKEND_ERROR: "backend_error",
    verdict_pb2.VERDICT_ORIGIN_EDGE_FALLBACK: "edge_fallback",
}
# Crop mode: the union of the boxes grows by this share of its width (height) on each side, for context.
CROP_PADDING = 0.25
MIN_MOTION_CROP = 96  # pixels a side: enough context for the cloud to recognise a small object


class InvalidPolicyError(ValueError):
    """A policy whose values the edge cannot use; the message names each field path and its value."""


class ImageEncodeError(RuntimeError):
    """A frame OpenCV could not encode as JPEG."""


def f32(value: float) -> float:
    """The shortest decimal naming the same float32 as `value` (what a protobuf float field holds)."""
    if not math.isfinite(value):
        return float(value)
    return float(str(np.float32(value)))


# ---------------------------------------------------------------- policies


def policy_to_pb(policy: EdgePolicy) -> policy_pb2.Policy:
    """The wire form of a policy (bands sorted by label, so equal policies serialize to equal bytes)."""
    mining = policy.mining
    pb = policy_pb2.Policy(
        version=policy.version,
        scope=_SCOPE_TO_PB[policy.scope],
        scope_id=policy.scope_id,
        gate=policy_pb2.GateSettings(
            pixel_diff_threshold=policy.gate.pixel_diff_threshold,
            changed_area_fraction=policy.gate.changed_area_fraction,
            downscale_width=policy.gate.downscale_width,
        ),
        mining=policy_pb2.MiningSettings(
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
        ),
        uplink=policy_pb2.UplinkSettings(
            budget_bytes_per_s=policy.uplink.budget_bytes_per_s,
            burst_bytes=policy.uplink.burst_bytes,
            image_mode=_IMAGE_MODE_TO_PB[policy.uplink.image_mode],
            jpeg_quality=policy.uplink.jpeg_quality,
            replay_order=_REPLAY_ORDER_TO_PB[policy.uplink.replay_order],
        ),
    )
    if policy.model is not None:
        pb.model.CopyFrom(
            policy_pb2.ModelRef(
                name=policy.model.name, version=policy.model.version, uri=policy.model.uri, sha256=policy.model.sha256
            )
        )
    return pb


def policy_from_pb(pb: policy_pb2.Policy, base: EdgePolicy | None = None) -> EdgePolicy:
    """The edge's policy from its wire form, checked against the bounds of `EdgePolicy`.

    What the wire leaves unset keeps the value of `base` (the policy in force; the built-in default
    when None): a missing gate/mining/uplink section or default band, UNSPECIFIED image mode or
    replay order, and an unset model. Raises `InvalidPolicyError` naming every offending field.
    """
    base = base or EdgePolicy.model_validate({})
    where = f"policy v{pb.version}"
    if pb.scope not in _SCOPE_FROM_PB:
        raise InvalidPolicyError(f"{where}: scope: {pb.scope} is unspecified or unknown (expected FLEET, SITE or EDGE)")
    raw: dict[str, Any] = {
        "version": pb.version,
        "scope": _SCOPE_FROM_PB[pb.scope],
        "scope_id": pb.scope_id,
        "gate": _gate_from_pb(pb.gate) if pb.HasField("gate") else base.gate.model_dump(),
        "mining": _mining_from_pb(pb.mining, base, where) if pb.HasField("mining") else base.mining.model_dump(),
        "uplink": _uplink_from_pb(pb.uplink, base) if pb.HasField("uplink") else base.uplink.model_dump(),
        "model": _model_from_pb(pb.model) if pb.HasField("model") else base.model,
    }
    try:
        return EdgePolicy.model_validate(raw)
    except ValidationError as err:
        raise InvalidPolicyError("; ".join(error_lines(where, err, EdgePolicy))) from err


def _gate_from_pb(gate: policy_pb2.GateSettings) -> dict[str, Any]:
    return {
        "pixel_diff_threshold": gate.pixel_diff_threshold,
        "changed_area_fraction": f32(gate.changed_area_fraction),
        "downscale_width": gate.downscale_width,
    }


def _band_from_pb(band: policy_pb2.UncertaintyBand) -> dict[str, float]:
    return {"low": f32(band.low), "high": f32(band.high)}


def _mining_from_pb(mining: policy_pb2.MiningSettings, base: EdgePolicy, where: str) -> dict[str, Any]:
    bands: dict[str, dict[str, float]] = {}
    for band in mining.uncertainty_bands:
        if not band.label:
            raise InvalidPolicyError(f"{where}: mining.bands: a band has an empty label")
        if band.label in bands:
            raise InvalidPolicyError(f"{where}: mining.bands.{band.label}: label appears more than once")
        bands[band.label] = _band_from_pb(band)
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
    }


def _uplink_from_pb(uplink: policy_pb2.UplinkSettings, base: EdgePolicy) -> dict[str, Any]:
    return {
        "budget_bytes_per_s": uplink.budget_bytes_per_s,
        "burst_bytes": uplink.burst_bytes,
        "image_mode": _IMAGE_MODE_FROM_PB.get(uplink.image_mode, base.uplink.image_mode),
        "jpeg_quality": uplink.jpeg_quality,
        "replay_order": _REPLAY_ORDER_FROM_PB.get(uplink.replay_order, base.uplink.replay_order),
    }


def _model_from_pb(model: policy_pb2.ModelRef) -> dict[str, str]:
    return {"name": model.name, "version": model.version, "uri": model.uri, "sha256": model.sha256}


# ---------------------------------------------------------------- detections and samples


def detection_to_pb(detection: Detection) -> sample_pb2.Detection:
    """The wire form of one detection."""
    x1, y1, x2, y2 = detection.box
    return sample_pb2.Detection(
        class_id=detection.class_id,
        label=detection.label,
        score=detection.score,
        box=sample_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2),
    )


def detection_from_pb(pb: sample_pb2.Detection) -> Detection:
    """One detection from the wire (edge's or a cloud backend's)."""
    box = (f32(pb.box.x1), f32(pb.box.y1), f32(pb.box.x2), f32(pb.box.y2))
    return Detection(box=box, score=f32(pb.score), class_id=pb.class_id, label=pb.label)


def seconds_of(stamp: Timestamp) -> float:
    """Unix seconds of a protobuf Timestamp."""
    return stamp.seconds + stamp.nanos / 1e9


def timestamp_from_seconds(seconds: float) -> Timestamp:
    """A protobuf Timestamp from unix seconds (whole seconds split off first: a float64 holds ~0.2 µs there)."""
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    stamp = Timestamp()
    stamp.FromNanoseconds(whole * 1_000_000_000 + nanos)
    return stamp


def build_sample(
    *,
    sample_id: str,
    edge_id: str,
    camera_id: str,
    frame_seq: int,
    captured_at: float,
    jpeg: bytes,
    crop: tuple[int, int, int, int] | None,
    frame_size: tuple[int, int],
    jpeg_quality: int,
    detections: Iterable[Detection],
    model_name: str,
    model_version: str,
    policy_version: int,
    reason: str,
    detail: str,
    priority: float,
    trace_id: str,
) -> sample_pb2.Sample:
    """A Sample message; `frame_size` is (width, height), `reason` a mined-reason name such as "ibt"."""
    if reason not in MINED_REASONS:
        raise ValueError(f"mined reason {reason!r} is unknown (expected one of {', '.join(MINED_REASONS)})")
    width, height = frame_size
    image = sample_pb2.SampleImage(jpeg=jpeg, frame_width=width, frame_height=height, jpeg_quality=jpeg_quality)
    if crop is not None:
        x1, y1, x2, y2 = crop
        image.crop.CopyFrom(sample_pb2.CropBox(x1=x1, y1=y1, x2=x2, y2=y2))
    return sample_pb2.Sample(
        sample_id=sample_id,
        edge_id=edge_id,
        camera_id=camera_id,
        frame_seq=frame_seq,
        captured_at=timestamp_from_seconds(captured_at),
        image=image,
        detections=[detection_to_pb(d) for d in detections],
        edge_model_name=model_name,
        edge_model_version=model_version,
        policy_version=policy_version,
        mined_reason=MINED_REASONS[reason],
        mined_reason_detail=detail,
        priority=priority,
        trace_id=trace_id,
    )


# ---------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class EdgeVerdict:
    """What the edge keeps of a cloud verdict."""

    sample_id: str
    decision: DecisionName
    labels: tuple[str, ...]
    backend: str
    origin: OriginName
    queue_ms: float
    inference_ms: float
    detections: tuple[Detection, ...] = ()


def verdict_summary(pb: verdict_pb2.Verdict) -> EdgeVerdict:
    """The edge's summary of a verdict; UNSPECIFIED decision reads as unsure and origin as backend."""
    detections = tuple(detection_from_pb(d) for d in pb.detections)
    return EdgeVerdict(
        sample_id=pb.sample_id,
        decision=_DECISIONS.get(pb.decision, "unsure"),
        labels=tuple(sorted({d.label for d in detections})),
        backend=pb.backend,
        origin=_ORIGINS.get(pb.origin, "backend"),
        queue_ms=pb.queue_time_ms,
        inference_ms=pb.inference_time_ms,
        detections=detections,
    )


# ---------------------------------------------------------------- sample images


def crop_box(
    frame_size: tuple[int, int], detections: Sequence[Detection], padding: float = CROP_PADDING
) -> tuple[int, int, int, int] | None:
    """Union of the boxes, padded and clipped to the frame; None when that is the whole frame or nothing."""
    width, height = frame_size
    if not detections:
        return None
    x1 = min(d.box[0] for d in detections)
    y1 = min(d.box[1] for d in detections)
    x2 = max(d.box[2] for d in detections)
    y2 = max(d.box[3] for d in detections)
    pad_x, pad_y = (x2 - x1) * padding, (y2 - y1) * padding
    left = max(0, math.floor(x1 - pad_x))
    top = max(0, math.floor(y1 - pad_y))
    right = min(width, math.ceil(x2 + pad_x))
    bottom = min(height, math.ceil(y2 + pad_y))
    if right <= left or bottom <= top or (left, top, right, bottom) == (0, 0, width, height):
        return None
    return left, top, right, bottom


def motion_crop_box(
    frame_size: tuple[int, int], changed: tuple[int, int, int, int], padding: float = CROP_PADDING
) -> tuple[int, int, int, int] | None:
    """The region the gate saw change in, padded and at least MIN_MOTION_CROP pixels a side (None: whole frame)."""
    width, height = frame_size
    x1, y1, x2, y2 = changed
    side_x = max(MIN_MOTION_CROP, (x2 - x1) * (1 + 2 * padding))
    side_y = max(MIN_MOTION_CROP, (y2 - y1) * (1 + 2 * padding))
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    left = max(0, math.floor(centre_x - side_x / 2))
    top = max(0, math.floor(centre_y - side_y / 2))
    right = min(width, math.ceil(centre_x + side_x / 2))
    bottom = min(height, math.ceil(centre_y + side_y / 2))
    if right <= left or bottom <= top or (right - left) * (bottom - top) >= 0.8 * width * height:
        return None
    return left, top, right, bottom


def encode_sample_image(
    frame: NDArray[np.uint8],
    detections: Sequence[Detection],
    mode: ImageMode,
    jpeg_quality: int,
    motion_box: tuple[int, int, int, int] | None = None,
) -> tuple[bytes, tuple[int, int, int, int] | None]:
    """The JPEG a sample carries and the crop it shows (None: the whole frame). Blocking: run in an executor.

    In crop mode a sample with detections shows their padded union; one without (motion without
    detection) shows the padded region where the gate saw change, when the gate gave one.
    """
    height, width = frame.shape[:2]
    crop = None
    if mode == "crop":
        if detections:
            crop = crop_box((width, height), detections)
        elif motion_box is not None:
            crop = motion_crop_box((width, height), motion_box)
    image = frame if crop is None else frame[crop[1] : crop[3], crop[0] : crop[2]]
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not ok:
        raise ImageEncodeError(f"OpenCV could not encode a {width}x{height} frame (shape {frame.shape}) as JPEG")
    return buffer.tobytes(), crop
