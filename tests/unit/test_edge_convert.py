"""edge/convert.py: policies, detections, samples and verdicts between protobuf and the edge's types."""

from __future__ import annotations

import pytest

from common.detect import Detection
from edge.convert import (
    build_sample,
    detection_from_pb,
    detection_to_pb,
    policy_from_pb,
    policy_to_pb,
    verdict_summary,
)
from edge.policy.settings import Band, EdgePolicy, GatePolicy, MiningPolicy, ModelRef, UplinkPolicy
from protos import policy_pb2, sample_pb2, verdict_pb2
from protos.policy_settings import InvalidPolicyError


def rich_policy(scope: str = "site", scope_id: str = "plant-2") -> EdgePolicy:
    return EdgePolicy.model_validate(
        {
            "version": 7,
            "scope": scope,
            "scope_id": scope_id,
            "gate": GatePolicy(pixel_diff_threshold=25, changed_area_fraction=0.01, downscale_width=320),
            "mining": MiningPolicy(
                bands={"person": Band(low=0.35, high=0.7), "cat": Band(low=0.1, high=0.3)},
                default_band=Band(low=0.2, high=0.55),
                ibt_enabled=True,
                ibt_box_score_threshold=0.45,
                cross_entropy_enabled=True,
                cross_entropy_threshold=0.3,
                watch_list=("rocket", "motorcycle"),
                random_audit_rate=0.05,
            ),
            "uplink": UplinkPolicy(
                budget_bytes_per_s=64_000,
                burst_bytes=500_000,
                image_mode="crop",
                jpeg_quality=70,
                replay_order="oldest_first",
            ),
            "model": ModelRef(
                name="yolo-edge-n", version="3", uri="file:///m/edge.onnx", sha256="ab" * 32, size_bytes=4_005_158
            ),
        }
    )


@pytest.mark.parametrize(("scope", "scope_id"), [("fleet", ""), ("site", "plant-2"), ("edge", "gw-1")])
def test_policy_survives_a_round_trip_through_protobuf(scope: str, scope_id: str) -> None:
    policy = rich_policy(scope, scope_id)
    wire = policy_to_pb(policy).SerializeToString()
    assert policy_from_pb(policy_pb2.Policy.FromString(wire)) == policy


def test_policy_floats_come_back_as_written_not_as_float32_noise() -> None:
    back = policy_from_pb(policy_to_pb(rich_policy()))
    assert back.mining.bands["person"].low == 0.35
    assert back.gate.changed_area_fraction == 0.01


def test_equal_policies_serialize_to_equal_bytes_whatever_the_band_order() -> None:
    pb = policy_to_pb(rich_policy())
    assert [b.label for b in pb.mining.uncertainty_bands] == ["cat", "person"]
    assert policy_to_pb(policy_from_pb(pb)).SerializeToString() == pb.SerializeToString()


def test_scope_maps_to_the_wire_enum() -> None:
    assert policy_to_pb(rich_policy("fleet", "")).scope == policy_pb2.POLICY_SCOPE_FLEET
    assert policy_to_pb(rich_policy("edge", "gw-1")).scope == policy_pb2.POLICY_SCOPE_EDGE
    assert policy_to_pb(EdgePolicy.model_validate({})).scope == policy_pb2.POLICY_SCOPE_UNSPECIFIED


def test_unspecified_scope_is_refused() -> None:
    pb = policy_to_pb(rich_policy())
    pb.scope = policy_pb2.POLICY_SCOPE_UNSPECIFIED
    with pytest.raises(InvalidPolicyError, match=r"policy v7: scope: .*expected FLEET, SITE or EDGE"):
        policy_from_pb(pb)


def test_out_of_range_value_names_the_field_path_and_value() -> None:
    pb = policy_to_pb(rich_policy())
    pb.mining.default_uncertainty_band.high = 1.7
    with pytest.raises(InvalidPolicyError) as caught:
        policy_from_pb(pb)
    assert str(caught.value) == "policy v7: mining.default_band.high: 1.7 is above the maximum 1.0"


def test_every_bad_field_is_named() -> None:
    pb = policy_to_pb(rich_policy())
    pb.gate.pixel_diff_threshold = 0
    pb.uplink.jpeg_quality = 101
    with pytest.raises(InvalidPolicyError) as caught:
        policy_from_pb(pb)
    assert str(caught.value).split("; ") == [
        "policy v7: gate.pixel_diff_threshold: 0 is below the minimum 1",
        "policy v7: uplink.jpeg_quality: 101 is above the maximum 100",
    ]


def test_band_with_low_above_high_is_refused_with_its_label() -> None:
    pb = policy_to_pb(rich_policy())
    band = next(b for b in pb.mining.uncertainty_bands if b.label == "person")
    band.low, band.high = 0.8, 0.4
    with pytest.raises(InvalidPolicyError, match=r"mining\.bands\.person: .*band low 0\.8 is above high 0\.4"):
        policy_from_pb(pb)


def test_duplicate_band_label_is_refused() -> None:
    pb = policy_to_pb(rich_policy())
    pb.mining.uncertainty_bands.add(label="cat", low=0.2, high=0.4)
    with pytest.raises(InvalidPolicyError, match=r"mining\.bands\.cat: label appears more than once"):
        policy_from_pb(pb)


def test_unset_parts_keep_the_policy_in_force_but_an_unset_model_is_none() -> None:
    base = rich_policy()
    pb = policy_pb2.Policy(version=9, scope=policy_pb2.POLICY_SCOPE_FLEET)
    pb.uplink.CopyFrom(policy_to_pb(base).uplink)
    pb.uplink.image_mode = policy_pb2.UPLINK_IMAGE_MODE_UNSPECIFIED
    pb.uplink.replay_order = policy_pb2.REPLAY_ORDER_UNSPECIFIED
    policy = policy_from_pb(pb, base)
    assert policy.version == 9 and policy.scope == "fleet"
    assert policy.gate == base.gate and policy.mining == base.mining
    # The cloud signs whole policies: a model left out was dropped, and the edge goes back to its own.
    assert base.model is not None and policy.model is None
    assert policy.uplink.image_mode == "crop" and policy.uplink.replay_order == "oldest_first"


def test_detection_survives_a_round_trip() -> None:
    detection = Detection(box=(10.5, 20.0, 110.25, 220.0), score=0.41, class_id=2, label="motorcycle")
    wire = detection_to_pb(detection).SerializeToString()
    assert detection_from_pb(sample_pb2.Detection.FromString(wire)) == detection


def test_build_sample_fills_every_field() -> None:
    detections = [Detection(box=(1.0, 2.0, 30.0, 40.0), score=0.5, class_id=0, label="person")]
    sample = build_sample(
        sample_id="s-1",
        edge_id="gw-1",
        camera_id="cam-a",
        frame_seq=42,
        captured_at=1_700_000_000.25,
        jpeg=b"\xff\xd8jpeg",
        crop=(0, 0, 64, 48),
        frame_size=(640, 480),
        jpeg_quality=75,
        detections=detections,
        model_name="edge",
        model_version="1",
        policy_version=3,
        reason="uncertainty_band",
        detail="person 0.50 in band [0.25, 0.60]",
        priority=0.8,
        trace_id="ab" * 16,
    )
    back = sample_pb2.Sample.FromString(sample.SerializeToString())
    assert (back.sample_id, back.edge_id, back.camera_id, back.frame_seq) == ("s-1", "gw-1", "cam-a", 42)
    assert back.captured_at.ToNanoseconds() == 1_700_000_000_250_000_000
    assert (back.image.frame_width, back.image.frame_height, back.image.jpeg_quality) == (640, 480, 75)
    assert (back.image.crop.x2, back.image.crop.y2) == (64, 48)
    assert back.image.jpeg == b"\xff\xd8jpeg"
    assert [detection_from_pb(d) for d in back.detections] == detections
    assert back.mined_reason == sample_pb2.MINED_REASON_UNCERTAINTY_BAND
    assert (back.edge_model_name, back.edge_model_version, back.policy_version) == ("edge", "1", 3)
    assert back.mined_reason_detail.startswith("person 0.50")
    assert back.priority == pytest.approx(0.8)
    assert back.trace_id == "ab" * 16


def _sample(reason: str, crop: tuple[int, int, int, int] | None) -> sample_pb2.Sample:
    return build_sample(
        sample_id="s",
        edge_id="e",
        camera_id="c",
        frame_seq=0,
        captured_at=0.0,
        jpeg=b"",
        crop=crop,
        frame_size=(10, 10),
        jpeg_quality=80,
        detections=[],
        model_name="m",
        model_version="v",
        policy_version=0,
        reason=reason,
        detail="",
        priority=0.0,
        trace_id="",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ibt", sample_pb2.MINED_REASON_IBT),
        ("cross_entropy", sample_pb2.MINED_REASON_CROSS_ENTROPY),
        ("watch_list", sample_pb2.MINED_REASON_WATCH_LIST),
        ("motion_without_detection", sample_pb2.MINED_REASON_MOTION_WITHOUT_DETECTION),
        ("random_audit", sample_pb2.MINED_REASON_RANDOM_AUDIT),
    ],
)
def test_mined_reason_names_map_onto_the_wire_enum(name: str, value: int) -> None:
    assert _sample(name, None).mined_reason == value


def test_whole_frame_sample_has_no_crop_and_unknown_reason_is_refused() -> None:
    assert not _sample("ibt", None).image.HasField("crop")
    with pytest.raises(ValueError, match="mined reason 'hunch' is unknown"):
        _sample("hunch", None)


def test_verdict_summary_keeps_decision_labels_and_timings() -> None:
    verdict = verdict_pb2.Verdict(
        sample_id="s-1",
        decision=verdict_pb2.DECISION_CONFIRMED,
        backend="oracle",
        origin=verdict_pb2.VERDICT_ORIGIN_BACKEND,
        queue_time_ms=12.5,
        inference_time_ms=40.0,
        detections=[
            sample_pb2.Detection(label="person", score=0.9, box=sample_pb2.Box(x2=5, y2=5)),
            sample_pb2.Detection(label="cat", score=0.8, box=sample_pb2.Box(x2=5, y2=5)),
            sample_pb2.Detection(label="person", score=0.7, box=sample_pb2.Box(x2=5, y2=5)),
        ],
    )
    summary = verdict_summary(verdict)
    assert summary.sample_id == "s-1" and summary.decision == "confirmed"
    assert summary.labels == ("cat", "person")
    assert (summary.backend, summary.origin, summary.queue_ms, summary.inference_ms) == ("oracle", "backend", 12.5, 40)
    assert len(summary.detections) == 3


@pytest.mark.parametrize(
    ("decision", "origin", "expected"),
    [
        (verdict_pb2.DECISION_REJECTED, verdict_pb2.VERDICT_ORIGIN_BACKEND, ("rejected", "backend")),
        (verdict_pb2.DECISION_UNSURE, verdict_pb2.VERDICT_ORIGIN_TIMEOUT, ("unsure", "timeout")),
        (verdict_pb2.DECISION_UNSPECIFIED, verdict_pb2.VERDICT_ORIGIN_UNSPECIFIED, ("unsure", "backend")),
        (verdict_pb2.DECISION_UNSURE, verdict_pb2.VERDICT_ORIGIN_EDGE_FALLBACK, ("unsure", "edge_fallback")),
    ],
)
def test_verdict_decisions_and_origins_read_as_names(
    decision: verdict_pb2.Decision.ValueType, origin: verdict_pb2.VerdictOrigin.ValueType, expected: tuple[str, str]
) -> None:
    summary = verdict_summary(verdict_pb2.Verdict(decision=decision, origin=origin))
    assert (summary.decision, summary.origin) == expected
