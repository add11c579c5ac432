"""edge/policy/signing.py: Ed25519 verification of signed policies with real keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge.policy.signing import PolicyKeyError, PolicySignatureError, key_id, load_public_key, verify
from protos import policy_pb2
from tests.helpers.policy_keys import generate_keypair, load_private_key, sign, sign_bytes


def policy(version: int = 3) -> policy_pb2.Policy:
    pb = policy_pb2.Policy(version=version, scope=policy_pb2.POLICY_SCOPE_FLEET)
    pb.uplink.jpeg_quality = 70
    return pb


def test_a_policy_signed_with_the_cloud_key_verifies(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)
    signed = sign(policy(), load_private_key(private_path))
    assert verify(signed, load_public_key(public_path)) == policy()


def test_key_id_is_the_first_16_hex_digits_of_sha256_of_the_raw_key(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)
    public_key = load_public_key(public_path)
    assert len(key_id(public_key)) == 16
    assert sign(policy(), load_private_key(private_path)).key_id == key_id(public_key)


def test_altered_policy_bytes_fail_verification(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)
    signed = sign(policy(), load_private_key(private_path))
    signed.policy = policy(version=99).SerializeToString()
    with pytest.raises(PolicySignatureError, match="bad signature"):
        verify(signed, load_public_key(public_path))


def test_a_policy_signed_by_another_key_is_refused_by_key_id(tmp_path: Path) -> None:
    _, public_path = generate_keypair(tmp_path / "cloud")
    other_private, _ = generate_keypair(tmp_path / "attacker")
    with pytest.raises(PolicySignatureError, match="unknown key id"):
        verify(sign(policy(), load_private_key(other_private)), load_public_key(public_path))


def test_another_key_claiming_the_trusted_key_id_fails_the_signature(tmp_path: Path) -> None:
    _, public_path = generate_keypair(tmp_path / "cloud")
    other_private, _ = generate_keypair(tmp_path / "attacker")
    public_key = load_public_key(public_path)
    forged = sign(policy(), load_private_key(other_private), key_id=key_id(public_key))
    with pytest.raises(PolicySignatureError, match="bad signature"):
        verify(forged, public_key)


def test_an_unknown_algorithm_is_refused(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)
    signed = sign(policy(), load_private_key(private_path), algorithm="rsa-pss")
    with pytest.raises(PolicySignatureError, match="algorithm 'rsa-pss' is not supported"):
        verify(signed, load_public_key(public_path))


def test_signed_bytes_that_are_not_a_policy_are_refused(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)
    signed = sign_bytes(b"\xff\xff\xff", load_private_key(private_path))
    with pytest.raises(PolicySignatureError, match="do not parse"):
        verify(signed, load_public_key(public_path))


def test_missing_key_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyKeyError, match=r"nope\.pub: policy public key cannot be read"):
        load_public_key(tmp_path / "nope.pub")


def test_key_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pub"
    path.write_text("not a key\n")
    with pytest.raises(PolicyKeyError, match="not a PEM public key"):
        load_public_key(path)


def test_key_of_another_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.pub"
    path.write_bytes(
        generate_private_key(SECP256R1()).public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(PolicyKeyError, match="expected an Ed25519 public key"):
        load_public_key(path)
