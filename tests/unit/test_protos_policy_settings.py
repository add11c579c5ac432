"""The shared policy settings to protobuf and back: unchanged, unset parts kept, wire-only faults named."""

from __future__ import annotations

import pytest

from protos import policy_pb2
from protos.floats import f32
from protos.policy_settings import (
    Band,
    CameraMining,
    GateSettings,
    InvalidPolicyError,
    MiningSettings,
    ModelRef,
    PolicySettings,
    UplinkSettings,
    settings_fields_from_pb,
    settings_to_pb,
)


def rich_settings() -> PolicySettings:
    return PolicySettings(
        gate=GateSettings(pixel_diff_threshold=25, changed_area_fraction=0.002, downscale_width=320),
        mining=MiningSettings(
            bands={"person": Band(low=0.3, high=0.65), "car": Band(low=0.2, high=0.5)},
            default_band=Band(low=0.35, high=0.7),
            ibt_enabled=True,
            ibt_box_score_threshold=0.45,
            ibt_image_fraction_threshold=0.3,
            cross_entropy_enabled=True,
            cross_entropy_threshold=0.35,
            watch_list=("knife", "fire"),
            motion_without_detection_enabled=False,
            random_audit_rate=0.07,
            resend_interval_s=1.5,
            watch_reask_interval_s=45.0,
            cameras={
                "door": CameraMining(random_audit_rate=0.015, watch_reask_interval_s=90.0),
                "yard": CameraMining(motion_min_area_fraction=0.004),
            },
        ),
        uplink=UplinkSettings(
            budget_bytes_per_s=64 * 1024,
            burst_bytes=1 << 18,
            image_mode="crop",
            jpeg_quality=65,
            replay_order="oldest_first",
        ),
        model=ModelRef(
            name="yolo-edge-n", version="3", uri="file:///m/edge.onnx", sha256="ab" * 32, size_bytes=4_005_158
        ),
    )


def through_the_wire(settings: PolicySettings, base: PolicySettings | None = None) -> PolicySettings:
    pb = policy_pb2.Policy(version=1, scope=policy_pb2.POLICY_SCOPE_FLEET)
    settings_to_pb(settings, pb)
    received = policy_pb2.Policy.FromString(pb.SerializeToString())
    return PolicySettings.model_validate(settings_fields_from_pb(received, base or PolicySettings(), "policy v1"))


@pytest.mark.parametrize("settings", [PolicySettings(), rich_settings()], ids=["defaults", "rich"])
def test_settings_survive_the_wire_unchanged(settings):
    assert through_the_wire(settings) == settings


def test_equal_settings_serialize_to_equal_bytes_whatever_the_band_order():
    one = rich_settings()
    other = one.model_copy(
        update={"mining": one.mining.model_copy(update={"bands": dict(reversed(one.mining.bands.items()))})}
    )
    first, second = policy_pb2.Policy(), policy_pb2.Policy()
    settings_to_pb(one, first)
    settings_to_pb(other, second)
    assert first.SerializeToString() == second.SerializeToString()


def test_what_the_wire_leaves_unset_keeps_the_base_except_the_model():
    base = rich_settings()
    pb = policy_pb2.Policy(version=2, scope=policy_pb2.POLICY_SCOPE_FLEET)
    pb.mining.ibt_enabled = True  # a mining section without a default band
    fields = settings_fields_from_pb(pb, base, "policy v2")
    settings = PolicySettings.model_validate(fields)
    assert (settings.gate, settings.uplink) == (base.gate, base.uplink)
    assert settings.mining.default_band == base.mining.default_band
    assert base.model is not None and settings.model is None, "no model on the wire: the edge's own"


def test_unspecified_enums_keep_the_base():
    base = rich_settings()
    pb = policy_pb2.Policy()
    settings_to_pb(PolicySettings(), pb)
    pb.uplink.image_mode = policy_pb2.UPLINK_IMAGE_MODE_UNSPECIFIED
    pb.uplink.replay_order = policy_pb2.REPLAY_ORDER_UNSPECIFIED
    uplink = PolicySettings.model_validate(settings_fields_from_pb(pb, base, "p")).uplink
    assert (uplink.image_mode, uplink.replay_order) == ("crop", "oldest_first")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["", "cat"], r"p: mining\.bands: an entry has an empty label"),
        (["cat", "cat"], r"bands\.cat: .*more than once"),
    ],
)
def test_band_labels_the_models_cannot_check_are_refused_by_name(labels, message):
    pb = policy_pb2.Policy()
    pb.mining.uncertainty_bands.extend(policy_pb2.UncertaintyBand(label=label, low=0.2, high=0.4) for label in labels)
    with pytest.raises(InvalidPolicyError, match=message):
        settings_fields_from_pb(pb, PolicySettings(), "p")


def test_a_cameras_own_values_replace_the_edge_wide_ones_only_where_written():
    mining = rich_settings().mining
    door, yard = mining.for_camera("door"), mining.for_camera("yard")
    assert (door.random_audit_rate, door.watch_reask_interval_s, door.motion_min_area_fraction) == (0.015, 90.0, 0.0)
    assert (yard.random_audit_rate, yard.motion_min_area_fraction) == (0.07, 0.004)
    assert mining.for_camera("hall") is mining
    # An entry that leaves a field unset sends it unset: the edge-wide value stays in force there.
    pb = policy_pb2.Policy()
    settings_to_pb(rich_settings(), pb)
    (yard_pb,) = [entry for entry in pb.mining.cameras if entry.camera_id == "yard"]
    assert not yard_pb.HasField("random_audit_rate") and yard_pb.HasField("motion_min_area_fraction")


@pytest.mark.parametrize(
    ("cameras", "message"),
    [
        (["", "door"], r"p: mining\.cameras: an entry has an empty camera id"),
        (["a", "a"], r"cameras\.a: .*more than once"),
    ],
)
def test_camera_entries_the_models_cannot_check_are_refused_by_name(cameras, message):
    pb = policy_pb2.Policy()
    pb.mining.cameras.extend(policy_pb2.CameraMining(camera_id=camera, random_audit_rate=0.1) for camera in cameras)
    with pytest.raises(InvalidPolicyError, match=message):
        settings_fields_from_pb(pb, PolicySettings(), "p")


def test_a_cameras_value_out_of_bounds_is_refused_by_its_path():
    with pytest.raises(ValueError, match=r"cameras\.door\.random_audit_rate"):
        MiningSettings.model_validate({"cameras": {"door": {"random_audit_rate": 1.5}}})


def test_floats_come_back_as_the_decimals_people_wrote():
    assert policy_pb2.MiningSettings(random_audit_rate=0.35).random_audit_rate != 0.35  # float32 on the wire
    assert f32(policy_pb2.MiningSettings(random_audit_rate=0.35).random_audit_rate) == 0.35
    assert f32(float("inf")) == float("inf")
