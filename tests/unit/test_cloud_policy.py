"""The policy engine: layers merge fleet <- site <- edge, versions only go up (across restarts too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.metrics import CloudMetrics
from cloud.policy import Band, PolicyChange, PolicyEngine, PolicyOverride, PolicySettings, PolicySigner
from cloud.policy.settings import PolicyValidationError
from protos import policy_pb2


def engine(tmp_path: Path, metrics: CloudMetrics | None = None, **layers: object) -> PolicyEngine:
    return PolicyEngine(PolicySigner.ephemeral(), tmp_path / "policy-state.json", metrics or CloudMetrics(), **layers)  # type: ignore[arg-type]


def policy_of(engine: PolicyEngine, edge_id: str, site_id: str = "") -> policy_pb2.Policy:
    return policy_pb2.Policy.FromString(engine.policy_for(edge_id, site_id).policy)


def override(raw: dict[str, object]) -> PolicyOverride:
    return PolicyOverride.model_validate(raw)


def test_without_overrides_every_edge_gets_the_fleet_policy_version_1(tmp_path: Path) -> None:
    fleet = PolicySettings.model_validate({"uplink": {"jpeg_quality": 70}})
    policy = policy_of(engine(tmp_path, fleet=fleet), "gw-1", "hq")
    assert (policy.version, policy.scope, policy.scope_id) == (1, policy_pb2.POLICY_SCOPE_FLEET, "")
    assert policy.uplink.jpeg_quality == 70


def test_layers_merge_fleet_then_site_then_edge_and_name_the_narrowest_scope(tmp_path: Path) -> None:
    policies = engine(
        tmp_path,
        fleet=PolicySettings.model_validate({"uplink": {"jpeg_quality": 70, "image_mode": "crop"}}),
        sites={"hq": override({"uplink": {"jpeg_quality": 60}})},
        edges={"gw-1": override({"mining": {"bands": {"person": {"low": 0.1, "high": 0.9}}}})},
    )
    own, sited, plain = (
        policy_of(policies, "gw-1", "hq"),
        policy_of(policies, "gw-2", "hq"),
        policy_of(policies, "gw-3"),
    )
    assert (own.scope, own.scope_id) == (policy_pb2.POLICY_SCOPE_EDGE, "gw-1")
    assert (sited.scope, sited.scope_id) == (policy_pb2.POLICY_SCOPE_SITE, "hq")
    assert plain.scope == policy_pb2.POLICY_SCOPE_FLEET
    assert [(b.label, round(b.high, 3)) for b in own.mining.uncertainty_bands] == [("person", 0.9)]
    assert (own.uplink.jpeg_quality, own.uplink.image_mode) == (60, policy_pb2.UPLINK_IMAGE_MODE_CROP)
    assert (sited.uplink.jpeg_quality, plain.uplink.jpeg_quality) == (60, 70)
    assert not sited.mining.uncertainty_bands


async def test_every_change_gets_a_newer_version_and_tells_the_listeners(tmp_path: Path) -> None:
    policies = engine(tmp_path)
    heard: list[PolicyChange] = []

    async def listen(change: PolicyChange) -> None:
        heard.append(change)

    policies.subscribe(listen)
    edge_version = await policies.set_edge("gw-1", {"gate": {"pixel_diff_threshold": 30}})
    fleet_version = await policies.set_fleet({"gate": {"pixel_diff_threshold": 20}})
    assert heard == [PolicyChange("edge", "gw-1", 2), PolicyChange("fleet", "", 3)]
    assert (edge_version, fleet_version) == (2, 3)
    own, other = policy_of(policies, "gw-1"), policy_of(policies, "gw-2")
    assert (own.version, own.gate.pixel_diff_threshold) == (3, 30)
    assert (other.version, other.gate.pixel_diff_threshold) == (3, 20)


async def test_invalid_settings_are_refused_with_their_field_path_and_counted(tmp_path: Path) -> None:
    metrics = CloudMetrics()
    policies = engine(tmp_path, metrics)
    with pytest.raises(PolicyValidationError) as refused:
        await policies.set_fleet({"mining": {"default_band": {"low": 0.2, "high": 1.7}}, "uplink": {"jpeg_quality": 5}})
    whole = r"edge gw-1 override: mining: bands\.person: an override gives a band whole"
    with pytest.raises(PolicyValidationError, match=whole):
        await policies.set_edge("gw-1", {"mining": {"bands": {"person": {"low": 0.5}}}})
    assert [path for path, _ in refused.value.problems] == ["mining.default_band.high", "uplink.jpeg_quality"]
    assert metrics.registry.get_sample_value("edgeglm_cloud_policies_rejected_total") == 2
    assert policies.version == 1 and policy_of(policies, "gw-1").version == 1


async def test_an_override_band_is_checked_against_the_policy_underneath(tmp_path: Path) -> None:
    policies = engine(
        tmp_path, fleet=PolicySettings.model_validate({"mining": {"default_band": {"low": 0.5, "high": 0.7}}})
    )
    await policies.set_edge("gw-1", {"mining": {"default_band": {"low": 0.1, "high": 0.3}}})
    band = policy_of(policies, "gw-1").mining.default_uncertainty_band
    assert (round(band.low, 3), round(band.high, 3)) == (0.1, 0.3)


async def test_a_restart_keeps_unchanged_versions_and_never_reissues_one(tmp_path: Path) -> None:
    fleet = PolicySettings.model_validate({"uplink": {"jpeg_quality": 70}})
    first = engine(tmp_path, fleet=fleet)
    assert await first.set_edge("gw-1", {"uplink": {"jpeg_quality": 90}}) == 2
    second = engine(tmp_path, fleet=fleet)  # same config: the API-set override is gone
    gone = policy_of(second, "gw-1")
    third = engine(tmp_path, fleet=PolicySettings.model_validate({"uplink": {"jpeg_quality": 75}}))
    assert policy_of(second, "gw-2").version == 1  # the fleet policy did not change
    assert (gone.version, gone.scope, gone.uplink.jpeg_quality) == (3, policy_pb2.POLICY_SCOPE_FLEET, 70)
    assert (third.version, policy_of(third, "gw-2").version, policy_of(third, "gw-1").version) == (4, 4, 4)


async def test_removing_an_override_gives_the_edge_a_newer_policy(tmp_path: Path) -> None:
    policies = engine(tmp_path)
    await policies.set_edge("gw-1", {"uplink": {"jpeg_quality": 90}})
    assert await policies.clear_override("edge", "gw-1") == 3
    policy = policy_of(policies, "gw-1")
    assert (policy.version, policy.scope, policy.uplink.jpeg_quality) == (3, policy_pb2.POLICY_SCOPE_FLEET, 80)
    assert policies.snapshot()["edges"] == {}


async def test_the_band_adjustment_seam_publishes_an_edge_override(tmp_path: Path) -> None:
    policies = engine(tmp_path, edges={"gw-1": override({"uplink": {"jpeg_quality": 90}})})
    version = await policies.adjust_bands("gw-1", {"cat": Band(low=0.2, high=0.5)}, reason="recall below target")
    policy = policy_of(policies, "gw-1")
    assert (version, policy.version, policy.uplink.jpeg_quality) == (3, 3, 90)  # v2: the override at start
    assert [(b.label, round(b.low, 3), round(b.high, 3)) for b in policy.mining.uncertainty_bands] == [
        ("cat", 0.2, 0.5)
    ]


def test_a_state_claiming_an_impossible_version_stops_the_start_with_the_file_named(tmp_path: Path) -> None:
    (tmp_path / "policy-state.json").write_text('{"last_version": 18446744073709551615, "layers": {}}')
    with pytest.raises(RuntimeError, match=r"policy-state\.json: policy version state is corrupt"):
        engine(tmp_path)


async def test_versions_stop_at_the_highest_an_edge_accepts(tmp_path: Path) -> None:
    (tmp_path / "policy-state.json").write_text(f'{{"last_version": {(1 << 53) - 2}, "layers": {{}}}}')
    policies = engine(tmp_path)  # the fleet layer takes the last version there is
    assert policies.version == (1 << 53) - 1
    with pytest.raises(PolicyValidationError, match="no edge accepts more"):
        await policies.set_edge("gw-1", {"uplink": {"jpeg_quality": 50}})


async def test_while_a_change_is_being_written_the_policy_served_is_never_older_than_its_number(
    tmp_path: Path,
) -> None:
    # The MQTT bridge asks for an edge's policy whenever that edge's status arrives, and a status can
    # arrive while a change's state file is written off the loop: it must get the new bytes, or it
    # records the new number against the old policy and never sends the edge the change.
    policy = engine(tmp_path)
    assert policy_of(policy, "gw-1").version == 1  # cached
    seen: list[tuple[int, int]] = []
    write = policy._write_state

    def write_and_look() -> None:
        seen.append((policy.version_for("gw-1"), policy_of(policy, "gw-1").version))
        write()

    policy._write_state = write_and_look  # type: ignore[method-assign]
    await policy.set_fleet({"mining": {"watch_list": ["person"]}})
    assert seen == [(2, 2)]
