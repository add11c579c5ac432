"""The edge's one conversion module between protobuf messages and the edge's own types.

Policies (`policy_pb2.Policy` <-> `EdgePolicy`: the version and scope here, the settings through
the shared `protos.policy_settings`), detections, the samples the edge sends up, the verdicts that
come down, and the JPEG a sample carries. Protobuf floats are 32-bit: values read from the wire are
turned back into the shortest decimal that names the same float32 (0.35, not 0.3499999940395355,
with `protos.floats.f32`), so a policy survives a round trip unchanged and logs read as
people wrote them.
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

from common.boxes import CROP_PADDING, padded_union
from common.config import error_lines
from common.detect import Detection
from edge.policy.settings import EdgePolicy
from protos import policy_pb2, sample_pb2, verdict_pb2
from protos.floats import f32
from protos.policy_settings import InvalidPolicyError, settings_fields_from_pb, settings_to_pb
from protos.reasons import MINED_REASONS

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
_RULE_MATCHES: dict[int, Literal["matched", "not_matched", "unsure"]] = {
    verdict_pb2.RULE_MATCH_MATCHED: "matched",
    verdict_pb2.RULE_MATCH_NOT_MATCHED: "not_matched",
    verdict_pb2.RULE_MATCH_UNSURE: "unsure",
}
MIN_MOTION_CROP = 96  # pixels a side: enough context for the cloud to recognise a small object


class ImageEncodeError(RuntimeError):
    """A frame OpenCV could not encode as JPEG."""


# ---------------------------------------------------------------- policies


def policy_to_pb(policy: EdgePolicy) -> policy_pb2.Policy:
    """The wire form of a policy (bands sorted by label, so equal policies serialize to equal bytes)."""
    pb = policy_pb2.Policy(version=policy.version, scope=_SCOPE_TO_PB[policy.scope], scope_id=policy.scope_id)
    if policy.not_after is not None:
        pb.not_after.FromMicroseconds(round(policy.not_after * 1_000_000))
    settings_to_pb(policy, pb)
    return pb


def policy_from_pb(pb: policy_pb2.Policy, base: EdgePolicy | None = None) -> EdgePolicy:
    """The edge's policy from its wire form, checked against the bounds of the policy contract.

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
        "not_after": pb.not_after.ToMicroseconds() / 1_000_000 if pb.HasField("not_after") else None,
        **settings_fields_from_pb(pb, base, where),
    }
    try:
        return EdgePolicy.model_validate(raw)
    except ValidationError as err:
        raise InvalidPolicyError("; ".join(error_lines(where, err, EdgePolicy))) from err


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
    track_id: str = "",
    motion_area_fraction: float = 0.0,
    rule_ids: Sequence[str] = (),
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
        track_id=track_id,
        motion_area_fraction=motion_area_fraction,
        rule_ids=list(rule_ids),
    )


# ---------------------------------------------------------------- verdicts


@dataclass(frozen=True, slots=True)
class EdgeRuleAnswer:
    """The cloud's answer to one watch rule a sample asked."""

    rule_id: str
    match: Literal["matched", "not_matched", "unsure"]
    reason: str


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
    text: str = ""  # the backend's explanation; a VLM's description of what it saw
    track_id: str = ""  # the tracked object the verdict is about (empty: none)
    rule_answers: tuple[EdgeRuleAnswer, ...] = ()  # one per watch rule the sample asked


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
        text=pb.text,
        track_id=pb.track_id,
        rule_answers=tuple(
            EdgeRuleAnswer(a.rule_id, _RULE_MATCHES.get(a.match, "unsure"), a.reason) for a in pb.rule_answers
        ),
    )


# ---------------------------------------------------------------- sample images


def crop_box(
    frame_size: tuple[int, int], detections: Sequence[Detection], padding: float = CROP_PADDING
) -> tuple[int, int, int, int] | None:
    """The detections' padded union (`common.boxes.padded_union`); None when that is the whole frame or nothing."""
    return padded_union(frame_size, [d.box for d in detections], padding)


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
