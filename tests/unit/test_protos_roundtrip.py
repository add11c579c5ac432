"""Every wire message survives serialize → parse unchanged, and defaults read as UNSPECIFIED."""

from typing import TypeVar

from google.protobuf import descriptor, message, timestamp_pb2

from protos import policy_pb2, sample_pb2, session_pb2, status_pb2, verdict_pb2

CAPTURED_AT = timestamp_pb2.Timestamp(seconds=1_767_225_600, nanos=123_000_000)
GENERATED_MESSAGE_MODULES = (sample_pb2, verdict_pb2, policy_pb2, status_pb2, session_pb2)

M = TypeVar("M", bound=message.Message)


def _roundtrip(original: M) -> M:
    return type(original).FromString(original.SerializeToString())


def _detection(label: str, score: float) -> sample_pb2.Detection:
    return sample_pb2.Detection(
        class_id=3,
        label=label,
        score=score,
        box=sample_pb2.Box(x1=10.5, y1=20.0, x2=110.25, y2=220.0),
    )


def _full_sample() -> sample_pb2.Sample:
    return sample_pb2.Sample(
        sample_id="0b7e6c1e-4a63-4f5e-9d55-0f6a1c2b3d4e",
        edge_id="edge-07",
        camera_id="gate-north",
        captured_at=CAPTURED_AT,
        image=sample_pb2.SampleImage(
            jpeg=b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9",
            crop=sample_pb2.CropBox(x1=0, y1=8, x2=320, y2=248),
            frame_width=1920,
            frame_height=1080,
            jpeg_quality=85,
        ),
        detections=[_detection("person", 0.41), _detection("car", 0.93)],
        edge_model_name="yolo-edge-n",
        edge_model_version="2026.01.3",
        policy_version=42,
        mined_reason=sample_pb2.MINED_REASON_UNCERTAINTY_BAND,
        mined_reason_detail="person 0.41 in band [0.30, 0.60]",
        priority=0.82,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )


def _full_verdict() -> verdict_pb2.Verdict:
    return verdict_pb2.Verdict(
        sample_id="0b7e6c1e-4a63-4f5e-9d55-0f6a1c2b3d4e",
        edge_id="edge-07",
        decision=verdict_pb2.DECISION_CONFIRMED,
        detections=[_detection("person", 0.97)],
        text='{"event": "person at the gate"}',
        confidence=0.9,
        backend="glm",
        model_name="glm-4v-world-tiny",
        model_version="0.3.0",
        queue_time_ms=12.5,
        inference_time_ms=340.75,
        origin=verdict_pb2.VERDICT_ORIGIN_BACKEND,
        origin_detail="",
        decided_at=CAPTURED_AT,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )


def _full_policy() -> policy_pb2.Policy:
    return policy_pb2.Policy(
        version=43,
        scope=policy_pb2.POLICY_SCOPE_SITE,
        scope_id="site-harbour",
        issued_at=CAPTURED_AT,
        gate=policy_pb2.GateSettings(pixel_diff_threshold=25, changed_area_fraction=0.002, downscale_width=320),
        mining=policy_pb2.MiningSettings(
            uncertainty_band_enabled=True,
            uncertainty_bands=[
                policy_pb2.UncertaintyBand(label="person", low=0.3, high=0.6),
                policy_pb2.UncertaintyBand(label="car", low=0.25, high=0.5),
            ],
            default_uncertainty_band=policy_pb2.UncertaintyBand(low=0.35, high=0.65),
            ibt_enabled=True,
            ibt_box_score_threshold=0.5,
            ibt_image_fraction_threshold=0.5,
            cross_entropy_enabled=True,
            cross_entropy_threshold=0.6,
            watch_list_enabled=True,
            watch_list_labels=["fire", "knife"],
            motion_without_detection_enabled=True,
            random_audit_enabled=True,
            random_audit_rate=0.01,
        ),
        uplink=policy_pb2.UplinkSettings(
            budget_bytes_per_s=64_000,
            burst_bytes=512_000,
            image_mode=policy_pb2.UPLINK_IMAGE_MODE_CROP,
            jpeg_quality=80,
            replay_order=policy_pb2.REPLAY_ORDER_NEWEST_FIRST,
        ),
        model=policy_pb2.ModelRef(
            name="yolo-edge-n",
            version="2026.01.4",
            uri="https://models.example/yolo-edge-n-2026.01.4.onnx",
            sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ),
    )


def _signed_policy() -> policy_pb2.SignedPolicy:
    return policy_pb2.SignedPolicy(
        policy=_full_policy().SerializeToString(),
        signature=bytes(range(64)),
        key_id="cloud-2026-01",
        algorithm="ed25519",
    )


def _full_status() -> status_pb2.EdgeStatus:
    return status_pb2.EdgeStatus(
        edge_id="edge-07",
        site_id="site-harbour",
        reported_at=CAPTURED_AT,
        started_at=timestamp_pb2.Timestamp(seconds=1_767_220_000),
        state=status_pb2.EDGE_STATE_AUTONOMOUS,
        model_name="yolo-edge-n",
        model_version="2026.01.3",
        policy_version=42,
        outbox_samples=17,
        outbox_bytes=1_234_567,
        counters=status_pb2.EdgeCounters(
            frames_read=90_000,
            frames_skipped_by_gate=81_000,
            samples_mined=300,
            samples_sent=283,
            samples_evicted=0,
            bytes_sent=9_876_543,
        ),
        cameras=[
            status_pb2.CameraStatus(
                camera_id="gate-north",
                state=status_pb2.CAMERA_STATE_STREAMING,
                last_frame_at=CAPTURED_AT,
                frames_per_s=15.0,
            ),
            status_pb2.CameraStatus(
                camera_id="yard",
                state=status_pb2.CAMERA_STATE_RECONNECTING,
                last_error="rtsp://yard/stream: connection refused",
            ),
        ],
    )


def test_full_sample_survives_roundtrip() -> None:
    original = _full_sample()

    parsed = _roundtrip(original)

    assert parsed == original
    assert parsed.image.crop.x2 == 320
    assert [detection.label for detection in parsed.detections] == ["person", "car"]


def test_full_verdict_survives_roundtrip() -> None:
    original = _full_verdict()

    assert _roundtrip(original) == original


def test_full_edge_status_survives_roundtrip() -> None:
    original = _full_status()

    assert _roundtrip(original) == original


def test_signed_policy_carries_the_exact_policy_bytes_that_were_signed() -> None:
    original = _signed_policy()

    parsed = _roundtrip(original)

    assert parsed == original
    assert parsed.policy == _full_policy().SerializeToString()
    assert policy_pb2.Policy.FromString(parsed.policy) == _full_policy()


def test_parsed_policy_reserializes_to_the_same_bytes() -> None:
    signed_bytes = _full_policy().SerializeToString()

    assert policy_pb2.Policy.FromString(signed_bytes).SerializeToString() == signed_bytes


def test_edge_messages_survive_roundtrip_and_keep_their_kind() -> None:
    hello = session_pb2.Hello(
        edge_id="edge-07",
        site_id="site-harbour",
        model_name="yolo-edge-n",
        model_version="2026.01.3",
        policy_version=42,
        agent_version="0.1.0",
        capabilities=["crop", "full_frame"],
    )
    messages = {
        "hello": session_pb2.EdgeMessage(hello=hello),
        "sample": session_pb2.EdgeMessage(sample=_full_sample()),
        "heartbeat": session_pb2.EdgeMessage(heartbeat=_full_status()),
    }

    for kind, original in messages.items():
        parsed = _roundtrip(original)
        assert parsed == original
        assert parsed.WhichOneof("kind") == kind


def test_cloud_messages_survive_roundtrip_and_keep_their_kind() -> None:
    messages = {
        "ack": session_pb2.CloudMessage(ack=session_pb2.Ack(sample_id="0b7e6c1e", accepted=True, duplicate=True)),
        "verdict": session_pb2.CloudMessage(verdict=_full_verdict()),
        "policy": session_pb2.CloudMessage(policy=_signed_policy()),
        "error": session_pb2.CloudMessage(
            error=session_pb2.SessionError(
                code=session_pb2.SESSION_ERROR_CODE_HELLO_EXPECTED,
                message="first message was a sample: send Hello first",
            )
        ),
    }

    for kind, original in messages.items():
        parsed = _roundtrip(original)
        assert parsed == original
        assert parsed.WhichOneof("kind") == kind


def test_setting_another_oneof_member_replaces_the_previous_one() -> None:
    envelope = session_pb2.EdgeMessage(sample=_full_sample())

    envelope.heartbeat.CopyFrom(_full_status())

    parsed = _roundtrip(envelope)
    assert parsed.WhichOneof("kind") == "heartbeat"
    assert not parsed.HasField("sample")


def test_empty_envelope_has_no_kind() -> None:
    assert _roundtrip(session_pb2.CloudMessage()).WhichOneof("kind") is None


def test_infer_and_get_policy_requests_survive_roundtrip() -> None:
    infer = session_pb2.InferRequest(sample=_full_sample(), timeout_ms=1500.0)
    get_policy = session_pb2.GetPolicyRequest(edge_id="edge-07", site_id="site-harbour", known_version=42)

    assert _roundtrip(infer) == infer
    assert _roundtrip(get_policy) == get_policy


def test_unset_enum_fields_read_as_unspecified() -> None:
    assert sample_pb2.Sample().mined_reason == sample_pb2.MINED_REASON_UNSPECIFIED
    assert verdict_pb2.Verdict().decision == verdict_pb2.DECISION_UNSPECIFIED
    assert verdict_pb2.Verdict().origin == verdict_pb2.VERDICT_ORIGIN_UNSPECIFIED
    assert policy_pb2.Policy().scope == policy_pb2.POLICY_SCOPE_UNSPECIFIED
    assert policy_pb2.UplinkSettings().image_mode == policy_pb2.UPLINK_IMAGE_MODE_UNSPECIFIED
    assert policy_pb2.UplinkSettings().replay_order == policy_pb2.REPLAY_ORDER_UNSPECIFIED
    assert status_pb2.EdgeStatus().state == status_pb2.EDGE_STATE_UNSPECIFIED
    assert status_pb2.CameraStatus().state == status_pb2.CAMERA_STATE_UNSPECIFIED
    assert session_pb2.SessionError().code == session_pb2.SESSION_ERROR_CODE_UNSPECIFIED


def test_every_enum_starts_with_an_unspecified_zero_value() -> None:
    enums: list[descriptor.EnumDescriptor] = [
        enum for module in GENERATED_MESSAGE_MODULES for enum in module.DESCRIPTOR.enum_types_by_name.values()
    ]

    for enum in enums:
        zero = enum.values_by_number[0].name
        assert enum.values[0].number == 0
        assert zero.endswith("_UNSPECIFIED"), f"{enum.full_name}: value 0 is {zero}, expected *_UNSPECIFIED"


def test_enum_value_from_a_newer_sender_survives_roundtrip() -> None:
    future_decision = verdict_pb2.Decision.ValueType(7)
    original = verdict_pb2.Verdict(sample_id="s", decision=future_decision)

    parsed = _roundtrip(original)

    assert parsed.decision == 7
    assert parsed.decision not in verdict_pb2.Decision.values()
