"""A question for the cloud becomes a sample: the frame (or its crop) encoded as the policy says, with
what the edge saw, why it asks, and where it changed. Pure and blocking: the agent runs it off its loop.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from common.detect import Detection
from edge import convert
from edge.gate import GateResult
from edge.policy.settings import EdgePolicy
from edge.sources import Frame
from edge.track import AskRequest
from protos import sample_pb2


@dataclass(frozen=True, slots=True)
class HeldFrame:
    """What a question about a frame needs to become a sample: the frame, its detections, where it changed."""

    frame: Frame
    detections: list[Detection]
    gate: GateResult
    model: tuple[str, str] = ("", "")  # (name, version) of the detector that found `detections`

    @property
    def motion_box(self) -> tuple[int, int, int, int] | None:
        """Where the gate saw change."""
        return self.gate.changed_box


def area_share(gate: GateResult, frame: Frame) -> float:
    """The share (0-1) of the frame the gate's changed region covers (0 without one)."""
    if gate.changed_box is None:
        return 0.0
    x1, y1, x2, y2 = gate.changed_box
    height, width = frame.image.shape[:2]
    return float(max(0, x2 - x1) * max(0, y2 - y1) / max(1, int(width) * int(height)))


def sample_for(
    ask: AskRequest[HeldFrame], policy: EdgePolicy, *, edge_id: str, model_name: str, model_version: str
) -> sample_pb2.Sample:
    """The sample that asks `ask`, encoded under `policy`, with a fresh sample id and trace id."""
    uplink_policy = policy.uplink
    held = ask.frame
    frame = held.frame
    # A question about a track carries that track's detection; one about a moving region nothing (it is
    # about what the edge did not see); one about a whole frame everything the frame holds.
    detections = list(ask.detections) if ask.track_id is not None else held.detections
    jpeg, crop = convert.encode_sample_image(
        frame.image, detections, uplink_policy.image_mode, uplink_policy.jpeg_quality, held.motion_box
    )
    height, width = frame.image.shape[:2]
    return convert.build_sample(
        sample_id=f"{edge_id}-{frame.camera_id}-{frame.seq}-{uuid.uuid4().hex[:8]}",
        edge_id=edge_id,
        camera_id=frame.camera_id,
        frame_seq=frame.seq,
        captured_at=frame.captured_at,
        jpeg=jpeg,
        crop=crop,
        frame_size=(width, height),
        jpeg_quality=uplink_policy.jpeg_quality,
        detections=detections,
        model_name=model_name,
        model_version=model_version,
        policy_version=policy.version,
        reason=ask.reason,
        detail=ask.detail,
        priority=ask.priority,
        trace_id=uuid.uuid4().hex,
        track_id=ask.track_id or "",
        motion_area_fraction=area_share(held.gate, frame) if ask.reason == "motion_without_detection" else 0.0,
        rule_ids=ask.rule_ids,
    )
