"""Test-only policy signing: real Ed25519 key pairs and SignedPolicy envelopes, as the cloud makes them.

The edge package only verifies; signing lives here so no edge code path can sign.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from protos import policy_pb2


def generate_keypair(folder: Path, name: str = "policy") -> tuple[Path, Path]:
    """Write `{name}.key` (PKCS8 PEM, unencrypted) and `{name}.pub` (SubjectPublicKeyInfo PEM) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    private_path.write_bytes(private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public_path.write_bytes(private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key of a PKCS8 PEM file."""
    key = load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def signer_key_id(private_key: Ed25519PrivateKey) -> str:
    """The key id of the contract: first 16 hex digits of sha256 of the raw public key."""
    raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(
    policy: policy_pb2.Policy,
    private_key: Ed25519PrivateKey,
    *,
    key_id: str | None = None,
    algorithm: str = "ed25519",
) -> policy_pb2.SignedPolicy:
    """`policy` serialized and signed; key_id and algorithm can be overridden to build bad envelopes."""
    data = policy.SerializeToString()
    return sign_bytes(data, private_key, key_id=key_id, algorithm=algorithm)


def sign_bytes(
    data: bytes, private_key: Ed25519PrivateKey, *, key_id: str | None = None, algorithm: str = "ed25519"
) -> policy_pb2.SignedPolicy:
    """Any bytes signed as a policy (to test what happens when the signed bytes are not a Policy)."""
    return policy_pb2.SignedPolicy(
        policy=data,
        signature=private_key.sign(data),
        key_id=signer_key_id(private_key) if key_id is None else key_id,
        algorithm=algorithm,
    )
