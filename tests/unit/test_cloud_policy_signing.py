"""Signing and the wire: what the cloud signs, an edge verifies and applies with the same values.

The cloud keeps its own copy of the policy settings (it cannot import edge); these tests hold the
two copies to the same shape and bounds through the wire, which is the contract between them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from cloud.cli import app as cloud_app
from cloud.metrics import CloudMetrics
from cloud.policy import PolicyEngine, PolicySettings, PolicySigner, SigningKeyError, load_private_key
from cloud.policy.settings import GateSettings, MiningSettings, UplinkSettings
from edge.convert import policy_from_pb
from edge.policy.settings import EdgePolicy, GatePolicy, MiningPolicy, UplinkPolicy
from edge.policy.signing import PolicySignatureError, load_public_key, verify
from protos import policy_pb2
from tests.helpers.policy_keys import signer_key_id

SETTINGS = {
    "gate": {"pixel_diff_threshold": 25, "changed_area_fraction": 0.002, "downscale_width": 200},
    "mining": {
        "bands": {"person": {"low": 0.3, "high": 0.7}, "cat": {"low": 0.2, "high": 0.5}},
        "default_band": {"low": 0.35, "high": 0.65},
        "ibt_enabled": True,
        "cross_entropy_enabled": True,
        "watch_list": ["motorcycle"],
        "random_audit_rate": 0.05,
    },
    "uplink": {"budget_bytes_per_s": 50_000, "image_mode": "crop", "jpeg_quality": 65, "replay_order": "oldest_first"},
}


def test_keygen_writes_a_pair_whose_public_half_verifies_the_signatures(tmp_path: Path) -> None:
    made = CliRunner().invoke(cloud_app, ["keygen", "--out", str(tmp_path)])
    again = CliRunner().invoke(cloud_app, ["keygen", "--out", str(tmp_path)])
    signer = PolicySigner.from_file(tmp_path / "policy-signing.key")
    signed = signer.sign(policy_pb2.Policy(version=4, scope=policy_pb2.POLICY_SCOPE_FLEET))
    assert made.exit_code == 0 and signer.key_id in made.stdout
    assert again.exit_code == 1 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "policy-signing.key").stat().st_mode & 0o077 == 0
    assert signer.key_id == signer_key_id(load_private_key(tmp_path / "policy-signing.key"))
    assert verify(signed, load_public_key(tmp_path / "policy-signing.pub")).version == 4


def test_a_key_that_is_not_ed25519_pem_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bogus.key"
    path.write_text("not a key")
    with pytest.raises(SigningKeyError, match=r"bogus\.key"):
        load_private_key(path)


def test_an_edge_applies_what_the_cloud_signs_with_the_same_values(tmp_path: Path) -> None:
    signer = PolicySigner.ephemeral()
    key = tmp_path / "policy.pub"
    key.write_bytes(signer.public_pem())
    policies = PolicyEngine(
        signer, tmp_path / "state.json", CloudMetrics(), fleet=PolicySettings.model_validate(SETTINGS)
    )
    applied = policy_from_pb(verify(policies.policy_for("gw-1"), load_public_key(key)))
    assert applied.not_after is not None
    expected = EdgePolicy.model_validate({**SETTINGS, "version": 1, "scope": "fleet", "not_after": applied.not_after})
    assert applied == expected


def test_signed_policies_expire_and_are_signed_again_before_they_do(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    policies = PolicyEngine(
        PolicySigner.ephemeral(), tmp_path / "state.json", CloudMetrics(), lifetime_s=3600, clock=lambda: now[0]
    )
    first = policy_pb2.Policy.FromString(policies.policy_for("gw-1").policy)
    assert first.not_after.seconds == 1_800_003_600
    now[0] += 1799  # within half its lifetime: the same signed bytes
    assert policy_pb2.Policy.FromString(policies.policy_for("gw-1").policy) == first
    now[0] += 2
    again = policy_pb2.Policy.FromString(policies.policy_for("gw-1").policy)
    assert again.version == first.version and again.not_after.seconds == 1_800_005_401


def test_a_tampered_policy_does_not_verify_on_the_edge(tmp_path: Path) -> None:
    signer = PolicySigner.ephemeral()
    key = tmp_path / "policy.pub"
    key.write_bytes(signer.public_pem())
    signed = PolicyEngine(signer, tmp_path / "state.json", CloudMetrics()).policy_for("gw-1")
    signed.policy = signed.policy[:-1] + bytes([signed.policy[-1] ^ 1])
    with pytest.raises(PolicySignatureError):
        verify(signed, load_public_key(key))


@pytest.mark.parametrize(
    ("cloud", "edge"), [(GateSettings, GatePolicy), (MiningSettings, MiningPolicy), (UplinkSettings, UplinkPolicy)]
)
def test_the_cloud_copy_of_the_settings_has_the_edge_fields_and_defaults(
    cloud: type[BaseModel], edge: type[BaseModel]
) -> None:
    assert set(cloud.model_fields) == set(edge.model_fields)
    assert cloud().model_dump() == edge().model_dump()


@pytest.mark.parametrize(
    "bad",
    [
        {"gate": {"pixel_diff_threshold": 0}},
        {"gate": {"changed_area_fraction": 1.5}},
        {"gate": {"downscale_width": 8}},
        {"mining": {"default_band": {"low": 0.7, "high": 0.3}}},
        {"mining": {"ibt_box_score_threshold": -0.1}},
        {"mining": {"random_audit_rate": 2}},
        {"uplink": {"jpeg_quality": 9}},
        {"uplink": {"jpeg_quality": 101}},
        {"uplink": {"budget_bytes_per_s": 10}},
        {"uplink": {"image_mode": "thumbnail"}},
    ],
)
def test_values_the_edge_refuses_are_refused_by_the_cloud_too(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EdgePolicy.model_validate(bad)
    with pytest.raises(ValidationError):
        PolicySettings.model_validate(bad)
