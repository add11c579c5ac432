"""The cloud's one conversion module between protobuf messages and the cloud's own types.

A `Sample` from the wire becomes a `SampleInput` (image decoded, geometry checked) that backends
judge; a backend's `BackendResult` becomes the `Verdict` sent back. Coordinates on the wire are
original-frame pixels; a backend sees the uploaded image (a crop, or a possibly downscaled frame),
and `ImageRegion` maps boxes between the two. Protobuf floats are 32-bit: values read from the wire
are turned into the shortest decimal naming the same float32 (0.35, not 0.3499999940395355).

Decoding a JPEG is blocking work: call `sample_from_pb` in an executor, not on the event loop.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from numpy.typing import NDArray

from common.detect.errors import ImageDecodeError
from common.detect.image import decode_image
from protos import sample_pb2, verdict_pb2
from protos.floats import f32
from protos.policy_settings import MAX_WATCH_RULES, RULE_ID_PATTERN
from protos.reasons import MINED_REASONS, MINED_REASONS_FROM_PB, MinedReasonName

Box = tuple[float, float, float, float]
DecisionName = Literal["confirmed", "rejected", "unsure"]
OriginName = Literal["backend", "timeout", "backend_error", "edge_fallback"]
BadSampleReason = Literal["bad_image", "malformed"]
RuleMatchName = Literal["matched", "not_matched", "unsure"]

DECISIONS: dict[DecisionName, verdict_pb2.Decision.ValueType] = {
    "confirmed": verdict_pb2.DECISION_CONFIRMED,
    "rejected": verdict_pb2.DECISION_REJECTED,
    "unsure": verdict_pb2.DECISION_UNSURE,
}
_DECISIONS_FROM_PB = {pb: name for name, pb in DECISIONS.items()}
RULE_MATCHES: dict[RuleMatchName, verdict_pb2.RuleMatch.ValueType] = {
    "matched": verdict_pb2.RULE_MATCH_MATCHED,
    "not_matched": verdict_pb2.RULE_MATCH_NOT_MATCHED,
    "unsure": verdict_pb2.RULE_MATCH_UNSURE,
}
_RULE_MATCHES_FROM_PB = {pb: name for name, pb in RULE_MATCHES.items()}
ORIGINS: dict[OriginName, verdict_pb2.VerdictOrigin.ValueType] = {
    "backend": verdict_pb2.VERDICT_ORIGIN_BACKEND,
    "timeout": verdict_pb2.VERDICT_ORIGIN_TIMEOUT,
    "backend_error": verdict_pb2.VERDICT_ORIGIN_BACKEND_ERROR,
    "edge_fallback": verdict_pb2.VERDICT_ORIGIN_EDGE_FALLBACK,
}


class BadSampleError(ValueError):
    """A sample the cloud cannot judge; `reason` is the bad_messages label, the message names the sample."""

    def __init__(self, sample_id: str, reason: BadSampleReason, problem: str) -> None:
        """`problem` says what is wrong with sample `sample_id`."""
        super().__init__(f"sample {sample_id or '<no sample_id>'}: {problem}")
        self.sample_id = sample_id
        self.reason: BadSampleReason = reason


@dataclass(frozen=True, slots=True)
class CloudDetection:
    """One object: label, class id in its model's label set, score, xyxy box in original-frame pixels."""

    label: str
    class_id: int
    score: float
    box: Box


@dataclass(frozen=True, slots=True)
class RuleQuestion:
    """A watch rule a sample asks, as the cloud's policy words it."""

    rule_id: str
    text: str


@dataclass(frozen=True, slots=True)
class RuleAnswer:
    """The answer to one watch rule: matched, not matched or unsure, and the model's short reason."""

    rule_id: str
    match: RuleMatchName
    reason: str


@dataclass(frozen=True, slots=True)
class CropBox:
    """Integer pixel region of the original frame (x2, y2 exclusive)."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.y2 - self.y1


@dataclass(frozen=True, slots=True)
class ImageRegion:
    """Where an image of `image_wh` pixels sits in the original frame: the `area` it shows, maybe scaled."""

    area: CropBox
    image_wh: tuple[int, int]

    def to_frame(self, box: Box) -> Box:
        """Map a box from image pixels to original-frame pixels."""
        sx, sy = self.area.width / self.image_wh[0], self.area.height / self.image_wh[1]
        x1, y1, x2, y2 = box
        return (self.area.x1 + x1 * sx, self.area.y1 + y1 * sy, self.area.x1 + x2 * sx, self.area.y1 + y2 * sy)

    def to_image(self, box: Box) -> Box:
        """Map a box from original-frame pixels to image pixels (it may fall outside the image)."""
        sx, sy = self.image_wh[0] / self.area.width, self.image_wh[1] / self.area.height
        x1, y1, x2, y2 = box
        return ((x1 - self.area.x1) * sx, (y1 - self.area.y1) * sy, (x2 - self.area.x1) * sx, (y2 - self.area.y1) * sy)


@dataclass(frozen=True, slots=True, eq=False)
class SampleInput:
    """A sample as backends see it: the decoded BGR image, its place in the frame, what the edge found."""

    sample_id: str
    edge_id: str
    camera_id: str
    frame_seq: int
    captured_at: float  # unix seconds, edge clock, microsecond precision
    image: NDArray[np.uint8]  # BGR, HxWx3: the crop, or the whole frame
    crop: CropBox | None  # None: the image shows the whole frame
    frame_size: tuple[int, int]  # (width, height) of the original frame
    detections: tuple[CloudDetection, ...]  # the edge's, in original-frame pixels
    mined_reason: MinedReasonName
    priority: float
    trace_id: str
    mined_reason_detail: str = ""
    edge_model_name: str = ""
    edge_model_version: str = ""
    policy_version: int = 0
    jpeg: bytes = b""  # the JPEG as received, for backends that forward it (GLM, OpenAI) as it is
    jpeg_quality: int = 0
    track_id: str = ""  # the edge's tracked object this sample asks about; echoed in the verdict
    motion_area_fraction: float = 0.0  # motion samples: the share of the frame the edge's gate saw change in
    rule_ids: tuple[str, ...] = ()  # the watch rules the sample asks, as received
    rules: tuple[RuleQuestion, ...] = ()  # those the cloud's policy for the edge has: what a backend is asked

    @property
    def region(self) -> ImageRegion:
        """Where the image sits in the original frame."""
        width, height = self.frame_size
        area = self.crop if self.crop is not None else CropBox(0, 0, width, height)
        return ImageRegion(area, (int(self.image.shape[1]), int(self.image.shape[0])))


@dataclass(frozen=True, slots=True)
class BackendResult:
    """A backend's judgement of one sample; detections in original-frame pixels."""

    decision: DecisionName
    detections: list[CloudDetection]
    text: str
    confidence: float
    rule_answers: tuple[RuleAnswer, ...] = ()  # answers to the sample's `rules` (cloud.rules completes them)
    reasoning_tokens: int = 0  # tokens the model spent thinking before it answered (0: none, or not known)
    thinking_ms: float = 0.0  # the share of its inference time those tokens took (an estimate)


@dataclass(frozen=True)
class SampleFailure:
    """A backend could not judge one sample (timeout, endpoint error): not a judgement, judged again later."""

    kind: str  # for the metric, e.g. "timeout", "http_5xx"
    text: str  # what happened, for people


def timestamp_from_seconds(seconds: float) -> Timestamp:
    """A protobuf Timestamp of unix `seconds`, to the microsecond."""
    stamp = Timestamp()
    stamp.FromMicroseconds(round(seconds * 1_000_000))
    return stamp


def seconds_from_timestamp(stamp: Timestamp) -> float:
    """Unix seconds of a protobuf Timestamp, to the microsecond."""
    return stamp.ToMicroseconds() / 1_000_000


def detection_to_pb(detection: CloudDetection) -> sample_pb2.Detection:
    """The wire form of a detection."""
    x1, y1, x2, y2 = detection.box
    return sample_pb2.Detection(
        class_id=detection.class_id,
        label=detection.label,
        score=detection.score,
        box=sample_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2),
    )


def detection_from_pb(pb: sample_pb2.Detection) -> CloudDetection:
    """A detection read from the wire."""
    box = pb.box
    return CloudDetection(
        label=pb.label,
        class_id=pb.class_id,
        score=f32(pb.score),
        box=(f32(box.x1), f32(box.y1), f32(box.x2), f32(box.y2)),
    )


def decode_jpeg(data: bytes, sample_id: str) -> NDArray[np.uint8]:
    """Decode a sample's JPEG into a BGR image; BadSampleError (reason bad_image) names the sample.

    `common.detect.image.decode_image` does the work (its size check before decoding, its strict
    decoder); this only turns its error into the sample's.
    """
    try:
        return decode_image(data, "image.jpeg", jpeg_only=True)
    except ImageDecodeError as err:
        raise BadSampleError(sample_id, "bad_image", str(err)) from err


def encode_jpeg(image: NDArray[np.uint8], quality: int = 90) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as JPEG")
    return bytes(buffer.tobytes())


# What a sample may hold. A message within the transport's size limit can still ask the cloud to
# store, log and echo far more than it carries (100k labels, a 1 MB id), or hold values no store or
# clock can take; these bounds refuse such samples before anything is decoded or kept.
MAX_ID_CHARS = 128  # sample_id, edge_id, camera_id, track_id, trace_id
MAX_TEXT_CHARS = 1024  # mined_reason_detail, edge_model_name, edge_model_version
MAX_LABEL_CHARS = 64
MAX_DETECTIONS = 512
MAX_FRAME_SIDE = 16_384  # frame_width, frame_height (pixels)
MAX_INTEGER = (1 << 63) - 1  # frame_seq, policy_version: SQLite's and PostgreSQL's bigint
MAX_TIMESTAMP_S = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a Timestamp may name
MAX_STATUS_BYTES = 16 << 10  # an edge's heartbeat (EdgeStatus): counters and a few names, ~1 kB in practice
MAX_FLEET_EDGES = 10_000  # edges the fleet status remembers; beyond, the longest gone is forgotten


_RULE_ID = re.compile(RULE_ID_PATTERN)


def shown_id(sample_id: str) -> str:
    """A sample id as errors and logs show it: an over-long one is cut, so a refusal never echoes a megabyte."""
    return sample_id if len(sample_id) <= MAX_ID_CHARS else f"{sample_id[:MAX_ID_CHARS]}... ({len(sample_id)} chars)"


def check_sample_fields(pb: sample_pb2.Sample) -> None:
    """Refuse a wire sample whose fields break the bounds above (BadSampleError, reason malformed)."""
    sample_id = shown_id(pb.sample_id)

    def refuse(problem: str) -> None:
        raise BadSampleError(sample_id, "malformed", problem)

    if not pb.sample_id:
        refuse("sample_id is empty; every sample needs its idempotency key")
    for name in ("sample_id", "edge_id", "camera_id", "track_id", "trace_id"):
        if len(getattr(pb, name)) > MAX_ID_CHARS:
            refuse(f"{name} has {len(getattr(pb, name))} characters; at most {MAX_ID_CHARS}")
    for name in ("mined_reason_detail", "edge_model_name", "edge_model_version"):
        if len(getattr(pb, name)) > MAX_TEXT_CHARS:
            refuse(f"{name} has {len(getattr(pb, name))} characters; at most {MAX_TEXT_CHARS}")
    if pb.mined_reason not in MINED_REASONS_FROM_PB:
        known = pb.mined_reason in sample_pb2.MinedReason.values()
        name = sample_pb2.MinedReason.Name(pb.mined_reason) if known else f"{pb.mined_reason} (unknown)"
        refuse(f"mined_reason is {name}; expected one of {', '.join(MINED_REASONS)}")
    for name in ("frame_seq", "policy_version"):
        if getattr(pb, name) > MAX_INTEGER:
            refuse(f"{name} is {getattr(pb, name)}; at most 2^63 - 1")
    stamp = pb.captured_at
    if not (0 <= stamp.seconds <= MAX_TIMESTAMP_S and 0 <= stamp.nanos < 1_000_000_000):
        refuse(f"captured_at ({stamp.seconds} s, {stamp.nanos} ns) is not a time between 1970 and 9999")
    width, height = pb.image.frame_width, pb.image.frame_height
    if (width == 0) != (height == 0) or width > MAX_FRAME_SIDE or height > MAX_FRAME_SIDE:
        refuse(f"image.frame_width/height are {width}x{height}; both 0 (the image is the frame) or 1-{MAX_FRAME_SIDE}")
    if not (0.0 <= pb.priority <= 1.0 and 0.0 <= pb.motion_area_fraction <= 1.0):  # NaN fails both
        refuse(f"priority ({pb.priority}) and motion_area_fraction ({pb.motion_area_fraction}) must lie in 0-1")
    if len(pb.rule_ids) > MAX_WATCH_RULES:
        refuse(f"{len(pb.rule_ids)} rule_ids; at most {MAX_WATCH_RULES}")
    for index, rule_id in enumerate(pb.rule_ids):
        if not _RULE_ID.fullmatch(rule_id):
            refuse(f"rule_ids[{index}] ({rule_id[:MAX_ID_CHARS]!r}) is not a rule id (policy.proto WatchRule.rule_id)")
    if len(set(pb.rule_ids)) != len(pb.rule_ids):
        refuse("rule_ids names a rule more than once")
    if len(pb.detections) > MAX_DETECTIONS:
        refuse(f"{len(pb.detections)} detections; at most {MAX_DETECTIONS}")
    for index, detection in enumerate(pb.detections):
        box = detection.box
        if len(detection.label) > MAX_LABEL_CHARS:
            refuse(f"detections[{index}].label has {len(detection.label)} characters; at most {MAX_LABEL_CHARS}")
        if not 0.0 <= detection.score <= 1.0:
            refuse(f"detections[{index}].score is {detection.score}; expected 0-1")
        if not all(math.isfinite(v) for v in (box.x1, box.y1, box.x2, box.y2)):
            refuse(f"detections[{index}].box ({box.x1}, {box.y1}, {box.x2}, {box.y2}) is not finite")


def sample_from_pb(pb: sample_pb2.Sample) -> SampleInput:
    """Check a wire sample and decode its image; BadSampleError says what is wrong (blocking: run in an executor)."""
    check_sample_fields(pb)
    sample_id = pb.sample_id
    image = decode_jpeg(pb.image.jpeg, sample_id)
    crop = _crop_from_pb(pb)
    frame_size = (pb.image.frame_width, pb.image.frame_height)
    if frame_size == (0, 0) and crop is None:
        frame_size = (int(image.shape[1]), int(image.shape[0]))
    return SampleInput(
        sample_id=sample_id,
        edge_id=pb.edge_id,
        camera_id=pb.camera_id,
        frame_seq=pb.frame_seq,
        captured_at=seconds_from_timestamp(pb.captured_at),
        image=image,
        crop=crop,
        frame_size=frame_size,
        detections=tuple(detection_from_pb(d) for d in pb.detections),
        mined_reason=MINED_REASONS_FROM_PB[pb.mined_reason],
        priority=f32(pb.priority),
        trace_id=pb.trace_id,
        mined_reason_detail=pb.mined_reason_detail,
        edge_model_name=pb.edge_model_name,
        edge_model_version=pb.edge_model_version,
        policy_version=pb.policy_version,
        jpeg=pb.image.jpeg,
        jpeg_quality=pb.image.jpeg_quality,
        track_id=pb.track_id,
        motion_area_fraction=f32(pb.motion_area_fraction),
        rule_ids=tuple(pb.rule_ids),
    )


def _crop_from_pb(pb: sample_pb2.Sample) -> CropBox | None:
    """The crop box, checked to lie inside the frame; None when the image shows the whole frame."""
    if not pb.image.HasField("crop"):
        return None
    c = pb.image.crop
    crop = CropBox(c.x1, c.y1, c.x2, c.y2)
    width, height = pb.image.frame_width, pb.image.frame_height
    if width == 0 or height == 0:
        raise BadSampleError(pb.sample_id, "malformed", "image.crop is set but image.frame_width/height are not")
    if not (crop.x1 < crop.x2 <= width and crop.y1 < crop.y2 <= height):
        raise BadSampleError(
            pb.sample_id,
            "malformed",
            f"image.crop ({crop.x1}, {crop.y1}, {crop.x2}, {crop.y2}) is empty or outside the {width}x{height} frame",
        )
    return crop


def sample_to_pb(sample: SampleInput) -> sample_pb2.Sample:
    """The wire form of a sample; its received JPEG travels as it is, else the image is encoded."""
    image = sample_pb2.SampleImage(
        jpeg=sample.jpeg or encode_jpeg(sample.image, sample.jpeg_quality or 90),
        frame_width=sample.frame_size[0],
        frame_height=sample.frame_size[1],
        jpeg_quality=sample.jpeg_quality,
    )
    if sample.crop is not None:
        c = sample.crop
        image.crop.CopyFrom(sample_pb2.CropBox(x1=c.x1, y1=c.y1, x2=c.x2, y2=c.y2))
    return sample_pb2.Sample(
        sample_id=sample.sample_id,
        edge_id=sample.edge_id,
        camera_id=sample.camera_id,
        captured_at=timestamp_from_seconds(sample.captured_at),
        image=image,
        detections=[detection_to_pb(d) for d in sample.detections],
        edge_model_name=sample.edge_model_name,
        edge_model_version=sample.edge_model_version,
        policy_version=sample.policy_version,
        mined_reason=MINED_REASONS[sample.mined_reason],
        mined_reason_detail=sample.mined_reason_detail,
        priority=sample.priority,
        trace_id=sample.trace_id,
        frame_seq=sample.frame_seq,
        track_id=sample.track_id,
        motion_area_fraction=sample.motion_area_fraction,
        rule_ids=list(sample.rule_ids),
    )


def verdict_to_pb(
    sample: SampleInput,
    result: BackendResult,
    *,
    backend: str,
    model_name: str,
    model_version: str,
    queue_ms: float = 0.0,
    inference_ms: float = 0.0,
    origin: OriginName = "backend",
    origin_detail: str = "",
    decided_at: float | None = None,
) -> verdict_pb2.Verdict:
    """The verdict on `sample` from a backend's result; `decided_at` (unix seconds) defaults to now."""
    return verdict_pb2.Verdict(
        sample_id=sample.sample_id,
        edge_id=sample.edge_id,
        decision=DECISIONS[result.decision],
        detections=[detection_to_pb(d) for d in result.detections],
        text=result.text,
        confidence=result.confidence,
        backend=backend,
        model_name=model_name,
        model_version=model_version,
        queue_time_ms=queue_ms,
        inference_time_ms=inference_ms,
        origin=ORIGINS[origin],
        origin_detail=origin_detail,
        decided_at=timestamp_from_seconds(time.time() if decided_at is None else decided_at),
        trace_id=sample.trace_id,
        track_id=sample.track_id,
        rule_answers=[
            verdict_pb2.RuleAnswer(rule_id=a.rule_id, match=RULE_MATCHES[a.match], reason=a.reason)
            for a in result.rule_answers
        ],
        reasoning_tokens=result.reasoning_tokens,
        thinking_time_ms=result.thinking_ms,
    )


def fallback_verdict(
    sample_id: str,
    edge_id: str,
    trace_id: str,
    *,
    origin: Literal["timeout", "backend_error"],
    detail: str,
    backend: str,
    model_name: str = "",
    model_version: str = "",
    queue_ms: float = 0.0,
    inference_ms: float = 0.0,
    decided_at: float | None = None,
    track_id: str = "",
) -> verdict_pb2.Verdict:
    """An UNSURE verdict standing in for one the backend did not give in time or at all (origin says which)."""
    return verdict_pb2.Verdict(
        sample_id=sample_id,
        edge_id=edge_id,
        decision=verdict_pb2.DECISION_UNSURE,
        backend=backend,
        model_name=model_name,
        model_version=model_version,
        queue_time_ms=queue_ms,
        inference_time_ms=inference_ms,
        origin=ORIGINS[origin],
        origin_detail=detail,
        decided_at=timestamp_from_seconds(time.time() if decided_at is None else decided_at),
        trace_id=trace_id,
        track_id=track_id,
    )


def result_from_pb(pb: verdict_pb2.Verdict) -> BackendResult:
    """The judgement a verdict carries (UNSPECIFIED reads as unsure, as the wire contract says)."""
    return BackendResult(
        decision=_DECISIONS_FROM_PB.get(pb.decision, "unsure"),
        detections=[detection_from_pb(d) for d in pb.detections],
        text=pb.text,
        confidence=f32(pb.confidence),
        rule_answers=tuple(
            RuleAnswer(a.rule_id, _RULE_MATCHES_FROM_PB.get(a.match, "unsure"), a.reason) for a in pb.rule_answers
        ),
        reasoning_tokens=pb.reasoning_tokens,
        thinking_ms=pb.thinking_time_ms,
    )


def detections_to_frame(detections: Iterable[CloudDetection], region: ImageRegion) -> list[CloudDetection]:
    """Detections found in a sample's image, moved to original-frame pixels."""
    return [CloudDetection(d.label, d.class_id, d.score, region.to_frame(d.box)) for d in detections]
