"""The cloud's conversions: wire samples in, verdicts out, round trips, bad images, crop geometry."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from cloud.convert import (
    BackendResult,
    BadSampleError,
    CloudDetection,
    CropBox,
    ImageRegion,
    fallback_verdict,
    result_from_pb,
    sample_from_pb,
    sample_to_pb,
    verdict_to_pb,
)
from protos import sample_pb2, verdict_pb2


def jpeg(width=64, height=48, value=90):
    image = np.full((height, width, 3), value, np.uint8)
    image[: height // 2, : width // 2] = (0, 0, 255)
    ok, buffer = cv2.imencode(".jpg", image)
    assert ok
    return buffer.tobytes()


def wire_sample(**image_fields) -> sample_pb2.Sample:
    image = {"jpeg": jpeg(), "frame_width": 64, "frame_height": 48, "jpeg_quality": 80, **image_fields}
    return sample_pb2.Sample(
        sample_id="s-1",
        edge_id="edge-07",
        camera_id="gate-north",
        captured_at=Timestamp(seconds=1_767_225_600, nanos=123_456_000),
        image=sample_pb2.SampleImage(**image),
        detections=[
            sample_pb2.Detection(
                class_id=0, label="person", score=0.41, box=sample_pb2.Box(x1=10.5, y1=4, x2=30.25, y2=40)
            )
        ],
        edge_model_name="yolo-edge-n",
        edge_model_version="3",
        policy_version=7,
        mined_reason=sample_pb2.MINED_REASON_UNCERTAINTY_BAND,
        mined_reason_detail="person 0.41 in band [0.30, 0.60]",
        priority=0.75,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        frame_seq=1234,
    )


def test_wire_sample_becomes_sample_input_with_image_and_edge_detections():
    sample = sample_from_pb(wire_sample())

    assert (sample.sample_id, sample.edge_id, sample.camera_id, sample.frame_seq) == (
        "s-1",
        "edge-07",
        "gate-north",
        1234,
    )
    assert sample.captured_at == pytest.approx(1_767_225_600.123456)
    assert sample.image.shape == (48, 64, 3)
    assert sample.image[0, 0].tolist() == pytest.approx([0, 0, 255], abs=8)
    assert sample.crop is None
    assert sample.frame_size == (64, 48)
    assert sample.detections == (CloudDetection("person", 0, 0.41, (10.5, 4.0, 30.25, 40.0)),)
    assert sample.mined_reason == "uncertainty_band"
    assert sample.priority == 0.75


@pytest.mark.parametrize("crop", [None, sample_pb2.CropBox(x1=100, y1=50, x2=164, y2=98)])
def test_sample_survives_the_round_trip_through_the_cloud_types(crop):
    original = wire_sample(frame_width=640, frame_height=480, **({"crop": crop} if crop else {}))

    assert sample_to_pb(sample_from_pb(original)) == original


def test_frame_size_comes_from_the_image_when_the_edge_left_it_out():
    sample = sample_from_pb(wire_sample(frame_width=0, frame_height=0))

    assert sample.frame_size == (64, 48)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a JPEG"),
        (jpeg()[:200], "truncated"),
        (b"\xff\xd8\xff\xe0" + b"garbage" * 10 + b"\xff\xd9", "cannot be decoded"),
    ],
)
def test_bad_jpeg_raises_bad_sample_error_naming_the_sample(data, problem):
    with pytest.raises(BadSampleError, match=problem) as caught:
        sample_from_pb(wire_sample(jpeg=data))

    assert caught.value.reason == "bad_image"
    assert caught.value.sample_id == "s-1"
    assert "sample s-1" in str(caught.value)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"sample_id": ""}, "sample_id is empty"),
        ({"mined_reason": sample_pb2.MINED_REASON_UNSPECIFIED}, "MINED_REASON_UNSPECIFIED"),
    ],
)
def test_sample_without_required_fields_is_malformed(change, problem):
    pb = wire_sample()
    for field, value in change.items():
        setattr(pb, field, value)

    with pytest.raises(BadSampleError, match=problem) as caught:
        sample_from_pb(pb)

    assert caught.value.reason == "malformed"


@pytest.mark.parametrize(
    ("crop", "frame_wh", "problem"),
    [
        (sample_pb2.CropBox(x1=600, y1=0, x2=700, y2=48), (640, 480), "outside the 640x480 frame"),
        (sample_pb2.CropBox(x1=10, y1=10, x2=10, y2=48), (640, 480), "empty"),
        (sample_pb2.CropBox(x1=0, y1=0, x2=64, y2=48), (0, 0), "frame_width/height are not"),
    ],
)
def test_crop_that_cannot_be_placed_in_the_frame_is_malformed(crop, frame_wh, problem):
    pb = wire_sample(crop=crop, frame_width=frame_wh[0], frame_height=frame_wh[1])

    with pytest.raises(BadSampleError, match=problem) as caught:
        sample_from_pb(pb)

    assert caught.value.reason == "malformed"


def test_crop_region_maps_boxes_between_image_and_frame_pixels_even_when_downscaled():
    # A 320x240 crop at (100, 50) of the frame, uploaded at half size (160x120).
    region = ImageRegion(CropBox(100, 50, 420, 290), image_wh=(160, 120))

    assert region.to_frame((10, 10, 20, 20)) == (120, 70, 140, 90)
    assert region.to_image((120, 70, 140, 90)) == (10, 10, 20, 20)


def test_sample_region_is_the_crop_or_the_whole_frame():
    cropped = sample_from_pb(
        wire_sample(crop=sample_pb2.CropBox(x1=100, y1=50, x2=164, y2=98), frame_width=640, frame_height=480)
    )
    whole = sample_from_pb(wire_sample())

    assert cropped.region.to_frame((0, 0, 64, 48)) == (100, 50, 164, 98)
    assert whole.region.to_frame((1, 2, 3, 4)) == (1, 2, 3, 4)


def test_backend_result_becomes_a_verdict_and_reads_back_unchanged():
    sample = sample_from_pb(wire_sample())
    result = BackendResult("confirmed", [CloudDetection("person", 0, 0.875, (11.0, 5.0, 31.5, 39.0))], "found", 0.875)

    verdict = verdict_to_pb(
        sample,
        result,
        backend="onnx",
        model_name="reference",
        model_version="sha256:0123",
        queue_ms=4.5,
        inference_ms=12.25,
        decided_at=1_767_225_601.5,
    )

    assert verdict.sample_id == "s-1"
    assert verdict.edge_id == "edge-07"
    assert verdict.trace_id == sample.trace_id
    assert verdict.decision == verdict_pb2.DECISION_CONFIRMED
    assert verdict.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND
    assert (verdict.backend, verdict.model_name, verdict.model_version) == ("onnx", "reference", "sha256:0123")
    assert (verdict.queue_time_ms, verdict.inference_time_ms) == (4.5, 12.25)
    assert verdict.decided_at == Timestamp(seconds=1_767_225_601, nanos=500_000_000)
    assert result_from_pb(verdict_pb2.Verdict.FromString(verdict.SerializeToString())) == result


def test_fallback_verdict_is_unsure_and_says_why():
    verdict = fallback_verdict("s-9", "edge-1", "trace", origin="timeout", detail="deadline passed", backend="glm")

    assert verdict.decision == verdict_pb2.DECISION_UNSURE
    assert verdict.origin == verdict_pb2.VERDICT_ORIGIN_TIMEOUT
    assert verdict.origin_detail == "deadline passed"
    assert verdict.HasField("decided_at")


def test_verdict_without_decision_reads_as_unsure():
    assert result_from_pb(verdict_pb2.Verdict(sample_id="x")).decision == "unsure"


def changed(**fields) -> sample_pb2.Sample:
    """The wire sample with fields set on the message as a hostile client would (unchecked values)."""
    pb = wire_sample()
    for path, value in fields.items():
        target = pb
        *parents, name = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        if name == "detections":
            del pb.detections[:]
            pb.detections.extend(value)
        else:
            setattr(target, name, value)
    return pb


MANY = [sample_pb2.Detection(label="cat", score=0.5)] * 513


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"mined_reason": 99}, "mined_reason is 99 (unknown)"),
        ({"frame_seq": 1 << 63}, "frame_seq is 9223372036854775808; at most 2^63 - 1"),
        ({"policy_version": (1 << 64) - 1}, "policy_version is 18446744073709551615"),
        ({"captured_at__seconds": 1 << 40}, "captured_at (1099511627776 s, 123456000 ns) is not a time"),
        ({"captured_at__seconds": -5}, "not a time between 1970 and 9999"),
        ({"image__frame_height": 0}, "image.frame_width/height are 64x0"),
        ({"image__frame_width": 100_000}, "are 100000x48"),
        ({"priority": float("nan")}, "priority (nan)"),
        ({"edge_id": "e" * 129}, "edge_id has 129 characters; at most 128"),
        ({"mined_reason_detail": "x" * 2000}, "mined_reason_detail has 2000 characters"),
        ({"detections": MANY}, "513 detections; at most 512"),
        ({"detections": [sample_pb2.Detection(label="l" * 65, score=0.5)]}, "detections[0].label has 65"),
        ({"detections": [sample_pb2.Detection(label="cat", score=7.0)]}, "detections[0].score is 7.0"),
        (
            {"detections": [sample_pb2.Detection(label="cat", score=0.5, box=sample_pb2.Box(x1=float("inf")))]},
            "detections[0].box (inf",
        ),
    ],
)
def test_fields_no_store_or_backend_can_take_are_refused_before_decoding(fields, problem):
    with pytest.raises(BadSampleError, match=re.escape(problem)) as caught:
        sample_from_pb(changed(**fields))
    assert caught.value.reason == "malformed"


def test_a_refusal_never_echoes_an_over_long_sample_id():
    pb = changed(sample_id="x" * 1_000_000)
    with pytest.raises(BadSampleError) as caught:
        sample_from_pb(pb)
    assert len(str(caught.value)) < 400 and "(1000000 chars)" in str(caught.value)
    assert len(caught.value.sample_id) < 200
