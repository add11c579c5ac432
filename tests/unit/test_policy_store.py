"""edge/policy/store.py: which policies an edge applies, persists and restores, with real keys and files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.convert import policy_to_pb
from edge.metrics import EdgeMetrics
from edge.policy.settings import Band, EdgePolicy
from edge.policy.signing import load_public_key
from edge.policy.store import PolicyStore
from protos import policy_pb2
from tests.helpers.policy_keys import generate_keypair, load_private_key, sign


@dataclass
class Keys:
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    other: Ed25519PrivateKey


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    private_path, public_path = generate_keypair(tmp_path / "keys")
    other_path, _ = generate_keypair(tmp_path / "keys", name="other")
    return Keys(load_private_key(private_path), load_public_key(public_path), load_private_key(other_path))


@pytest.fixture
def metrics() -> EdgeMetrics:
    return EdgeMetrics()


def make_store(tmp_path: Path, keys: Keys | None, metrics: EdgeMetrics) -> PolicyStore:
    public = keys.public if keys else None
    return PolicyStore(tmp_path / "state", public, metrics, edge_id="gw-1", site_id="plant-2")


def wire(version: int, scope: str = "fleet", scope_id: str = "", **mining: Any) -> policy_pb2.Policy:
    base = EdgePolicy.model_validate({})
    policy = base.model_copy(
        update={
            "version": version,
            "scope": scope,
            "scope_id": scope_id,
            "mining": base.mining.model_copy(update=mining),
        }
    )
    return policy_to_pb(policy)


def rejected(metrics: EdgeMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("edgeglm_edge_policies_rejected_total", {"reason": reason}) or 0.0


def applied(metrics: EdgeMetrics) -> float:
    return metrics.registry.get_sample_value("edgeglm_edge_policies_applied_total") or 0.0


def version_gauge(metrics: EdgeMetrics) -> float | None:
    return metrics.registry.get_sample_value("edgeglm_edge_policy_version")


def test_store_starts_with_the_builtin_default(tmp_path: Path, keys: Keys, metrics: EdgeMetrics) -> None:
    store = make_store(tmp_path, keys, metrics)
    assert store.current == EdgePolicy.model_validate({})
    assert store.current.version == 0 and version_gauge(metrics) == 0


def test_newer_signed_policy_is_applied_persisted_and_announced(
    tmp_path: Path, keys: Keys, metrics: EdgeMetrics
) -> None:
    store = make_store(tmp_path, keys, metrics)
    heard: list[EdgePolicy] = []
    store.subscribe(heard.append)
    signed = sign(wire(4, watch_list=("rocket",)), keys.private)
    result = store.offer(signed)
    assert result.applied and result.reason is None
    assert store.current.version == 4 and store.current.mining.watch_list == ("rocket",)
    assert heard == [store.current]
    assert applied(metrics) == 1 and version_gauge(metrics) == 4
    assert store.path.read_bytes() == signed.SerializeToString()
    assert [p.name for p in store.path.parent.iterdir()] == ["policy.pb"]


def test_apply_logs_what_changed(
    tmp_path: Path, keys: Keys, metrics: EdgeMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path, keys, metrics)
    store.offer(sign(wire(3), keys.private))
    default_band = Band(low=0.35, high=0.6)
    with caplog.at_level(logging.INFO, logger="edge.policy.store"):
        result = store.offer(sign(wire(4, default_band=default_band), keys.private))
    assert result.message == "policy v3 -> v4 (fleet): mining.default_band.low 0.25 -> 0.35"
    assert result.message in caplog.text


@pytest.mark.parametrize("version", [2, 3])
def test_policy_not_newer_is_refused_as_stale(tmp_path: Path, keys: Keys, metrics: EdgeMetrics, version: int) -> None:
    store = make_store(tmp_path, keys, metrics)
    store.offer(sign(wire(3), keys.private))
    persisted = store.path.read_bytes()
    result = store.offer(sign(wire(version, watch_list=("cat",)), keys.private))
    assert not result.applied and result.reason == "stale"
    assert store.current.version == 3 and store.current.mining.watch_list == ()
    assert store.path.read_bytes() == persisted
    assert rejected(metrics, "stale") == 1 and applied(metrics) == 1


def test_policy_signed_by_another_key_is_refused(tmp_path: Path, keys: Keys, metrics: EdgeMetrics) -> None:
    store = make_store(tmp_path, keys, metrics)
    result = store.offer(sign(wire(5), keys.other))
    assert not result.applied and result.reason == "signature" and "unknown key id" in result.message
    assert store.current.version == 0 and not store.path.exists()
    assert rejected(metrics, "signature") == 1


def test_tampered_policy_is_refused(tmp_path: Path, keys: Keys, metrics: EdgeMetrics) -> None:
    store = make_store(tmp_path, keys, metrics)
    signed = sign(wire(5), keys.private)
    signed.policy = wire(6).SerializeToString()
    assert store.offer(signed).reason == "signature"
    assert store.current.version == 0


def test_without_a_public_key_no_policy_is_trusted(tmp_path: Path, keys: Keys, metrics: EdgeMetrics) -> None:
    store = make_store(tmp_path, None, metrics)
    result = store.offer(sign(wire(5), keys.private))
    assert result.reason == "signature" and "no policy public key" in result.message
    assert store.current.version == 0


def test_out_of_range_policy_is_refused_as_invalid(tmp_path: Path, keys: Keys, metrics: EdgeMetrics) -> None:
    store = make_store(tmp_path, keys, metrics)
    pb = wire(7)
    pb.mining.default_uncertainty_band.high = 1.7
    result = store.offer(sign(pb, keys.private))
    assert result.reason == "invalid"
    assert result.message == "policy v7: mining.default_band.high: 1.7 is above the maximum 1.0"
    assert rejected(metrics, "invalid") == 1 and store.current.version == 0


def test_a_validly_signed_policy_claiming_an_impossible_version_is_refused_and_later_ones_still_apply(
    tmp_path: Path, keys: Keys, metrics: EdgeMetrics
) -> None:
    store = make_store(tmp_path, keys, metrics)
    pb = wire(1)
    pb.version = (1 << 64) - 1
    result = store.offer(sign(pb, keys.private))
    assert result.reason == "invalid" and "version" in result.message
    assert store.offer(sign(wire(8), keys.private)).applied and store.current.version == 8


def test_an_expired_policy_is_refused_on_arrival_and_the_one_in_force_outlives_its_own_expiry(
    tmp_path: Path, keys: Keys, metrics: EdgeMetrics
) -> None:
    now = [1_800_000_000.0]
    store = PolicyStore(
        tmp_path / "state", keys.public, metrics, edge_id="gw-1", site_id="plant-2", clock=lambda: now[0]
    )
    fresh = wire(5)
    fresh.not_after.FromSeconds(1_800_000_060)
    assert store.offer(sign(fresh, keys.private)).applied
    now[0] += 120  # both have expired now; a replay of old, validly signed bytes is refused
    stale_replay = wire(6)
    stale_replay.not_after.FromSeconds(1_800_000_030)
    refused = store.offer(sign(stale_replay, keys.private))
    assert refused.reason == "expired" and "policy v6 expired at 2027-01-15T08:00:30+00:00" in refused.message
    assert rejected(metrics, "expired") == 1 and store.current.version == 5
    restarted = PolicyStore(tmp_path / "state", keys.public, metrics, edge_id="gw-1", site_id="plant-2")
    assert restarted.load().version == 5, "the last good policy is kept across a restart past its expiry"


@pytest.mark.parametrize(
    ("scope", "scope_id", "accepted"),
    [
        ("fleet", "", True),
        ("site", "plant-2", True),
        ("site", "plant-9", False),
        ("edge", "gw-1", True),
        ("edge", "gw-2", False),
    ],
)
def test_policy_applies_only_within_its_scope(
    tmp_path: Path, keys: Keys, metrics: EdgeMetrics, scope: str, scope_id: str, accepted: bool
) -> None:
    store = make_store(tmp_path, keys, metrics)
    result = store.offer(sign(wire(5, scope, scope_id), keys.private))
    assert result.applied is accepted
    assert store.current.version == (5 if accepted else 0)
    assert rejected(metrics, "scope") == (0 if accepted else 1)


def test_restart_restores_the_persisted_policy(tmp_path: Path, keys: Keys, metrics: EdgeMetrics) -> None:
    make_store(tmp_path, keys, metrics).offer(sign(wire(8, watch_list=("rocket",)), keys.private))
    restarted_metrics = EdgeMetrics()
    restarted = make_store(tmp_path, keys, restarted_metrics)
    heard: list[EdgePolicy] = []
    restarted.subscribe(heard.append)
    restored = restarted.load()
    assert restored.version == 8 and restored.mining.watch_list == ("rocket",)
    assert restarted.current == restored and heard == [restored]
    assert version_gauge(restarted_metrics) == 8


def test_restart_without_a_persisted_policy_keeps_the_default(tmp_path: Path, keys: Keys, metrics: EdgeMetrics) -> None:
    assert make_store(tmp_path, keys, metrics).load().version == 0


def test_tampered_persisted_file_is_ignored_at_start(
    tmp_path: Path, keys: Keys, metrics: EdgeMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path, keys, metrics)
    store.offer(sign(wire(8), keys.private))
    signed = policy_pb2.SignedPolicy.FromString(store.path.read_bytes())
    signed.policy = wire(8, watch_list=("everything",)).SerializeToString()
    store.path.write_bytes(signed.SerializeToString())
    restarted_metrics = EdgeMetrics()
    with caplog.at_level(logging.WARNING, logger="edge.policy.store"):
        restored = make_store(tmp_path, keys, restarted_metrics).load()
    assert restored.version == 0
    assert "persisted policy" in caplog.text and "bad signature" in caplog.text
    assert rejected(restarted_metrics, "signature") == 1


def test_corrupt_persisted_file_is_ignored_at_start(tmp_path: Path, keys: Keys, metrics: EdgeMetrics) -> None:
    store = make_store(tmp_path, keys, metrics)
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"\x0a\xff\xff\xff\xff garbage")
    assert store.load().version == 0
    assert rejected(metrics, "signature") == 1


def test_persisted_policy_of_another_edge_is_ignored_at_start(tmp_path: Path, keys: Keys, metrics: EdgeMetrics) -> None:
    other = PolicyStore(tmp_path / "state", keys.public, EdgeMetrics(), edge_id="gw-2", site_id="plant-2")
    other.offer(sign(wire(9, "edge", "gw-2"), keys.private))
    assert make_store(tmp_path, keys, metrics).load().version == 0
    assert rejected(metrics, "scope") == 1


def test_policy_newer_than_the_restored_one_still_applies(tmp_path: Path, keys: Keys, metrics: EdgeMetrics) -> None:
    make_store(tmp_path, keys, metrics).offer(sign(wire(8), keys.private))
    restarted = make_store(tmp_path, keys, EdgeMetrics())
    restarted.load()
    assert restarted.offer(sign(wire(8), keys.private)).reason == "stale"
    assert restarted.offer(sign(wire(9), keys.private)).applied


def test_during_a_key_rotation_an_edge_trusts_both_keys_and_no_other(
    tmp_path: Path, keys: Keys, metrics: EdgeMetrics
) -> None:
    next_key = Ed25519PrivateKey.generate()
    store = PolicyStore(
        tmp_path / "state", [keys.public, next_key.public_key()], metrics, edge_id="gw-1", site_id="plant-2"
    )
    assert store.offer(sign(wire(3), keys.private)).applied  # the current key
    assert store.offer(sign(wire(4), next_key)).applied  # the next one, once the cloud switched
    stranger = store.offer(sign(wire(5), keys.other))
    assert stranger.reason == "signature" and "unknown key id" in stranger.message
    assert store.current.version == 4
