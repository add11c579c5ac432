"""Verification of the cloud's policy signatures (Ed25519). The edge only verifies; it never signs.

`SignedPolicy.policy` holds the serialized Policy, `signature` the Ed25519 signature of exactly those
bytes, `algorithm` is "ed25519" and `key_id` the first 16 hex digits of sha256 of the raw 32-byte
public key. The cloud keeps the private key; edges hold its SubjectPublicKeyInfo PEM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from google.protobuf.message import DecodeError

from common.signing import ALGORITHM, SignatureError, key_id, verify_bytes
from protos import policy_pb2

__all__ = ["ALGORITHM", "PolicyKeyError", "PolicySignatureError", "key_id", "load_public_key", "parse_signed", "verify"]


class PolicyKeyError(ValueError):
    """The configured public key cannot be used (missing, not PEM, or not an Ed25519 key)."""


class PolicySignatureError(SignatureError):
    """A signed policy that does not verify; the message says which check failed."""


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The cloud's Ed25519 public key from a SubjectPublicKeyInfo PEM file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PolicyKeyError(f"{path}: policy public key cannot be read ({err.strerror})") from err
    try:
        key = load_pem_public_key(data)
    except ValueError as err:
        raise PolicyKeyError(f"{path}: not a PEM public key ({err}); expected a SubjectPublicKeyInfo PEM") from err
    if not isinstance(key, Ed25519PublicKey):
        raise PolicyKeyError(f"{path}: is a {type(key).__name__}, expected an Ed25519 public key")
    return key


def verify(
    signed: policy_pb2.SignedPolicy, public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey]
) -> policy_pb2.Policy:
    """The policy inside `signed`, once its signature by one of `public_keys` (by key id) holds; else
    `PolicySignatureError`. Several keys are trusted while the cloud's key is rotated."""
    verify_bytes(
        signed.policy, signed.signature, signed.key_id, signed.algorithm, public_keys, "policy", PolicySignatureError
    )
    policy = policy_pb2.Policy()
    try:
        policy.ParseFromString(signed.policy)
    except DecodeError as err:
        raise PolicySignatureError(f"signature holds but the {len(signed.policy)} policy bytes do not parse") from err
    return policy


def parse_signed(data: bytes) -> policy_pb2.SignedPolicy:
    """A SignedPolicy from its serialized bytes; `PolicySignatureError` when they do not parse."""
    signed = policy_pb2.SignedPolicy()
    try:
        signed.ParseFromString(data)
    except DecodeError as err:
        raise PolicySignatureError(f"{len(data)} bytes are not a SignedPolicy message") from err
    return signed
