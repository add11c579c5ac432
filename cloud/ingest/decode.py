"""A received sample decoded for judging, with what the store keeps of it (blocking: run in an executor)."""

from __future__ import annotations

import logging

import cv2

from cloud.convert import SampleInput, sample_from_pb
from cloud.store import EdgeDetectionSummary, SampleMeta, make_thumbnail
from protos import sample_pb2

logger = logging.getLogger(__name__)


def decode_sample(pb: sample_pb2.Sample) -> tuple[SampleInput, SampleMeta]:
    """The sample for the backend and its metadata with a thumbnail; BadSampleError as `sample_from_pb`.

    A thumbnail that cannot be made is logged and left empty: the sample is judged all the same.
    """
    sample = sample_from_pb(pb)
    try:
        thumbnail = make_thumbnail(sample.image)
    except (ValueError, cv2.error) as err:
        logger.warning("sample %s: no thumbnail (%s)", sample.sample_id, err)
        thumbnail = b""
    meta = SampleMeta(
        camera_id=sample.camera_id,
        frame_seq=sample.frame_seq,
        captured_at=sample.captured_at if pb.HasField("captured_at") else None,
        mined_reason=sample.mined_reason,
        edge_detections=tuple(EdgeDetectionSummary(d.label, d.score) for d in sample.detections),
        policy_version=sample.policy_version,
        uplink_bytes=pb.ByteSize(),
        thumbnail_jpeg=thumbnail,
    )
    return sample, meta
