"""Signing policies with the cloud's Ed25519 key, as the edges verify them.

`SignedPolicy.policy` holds `Policy.SerializeToString()`, `signature` the Ed25519 signature of
exactly those bytes, `algorithm` is "ed25519" and `key_id` the first 16 hex digits of sha256 of the
raw 32-byte public key. The private key is a PKCS8 PEM (unencrypted) that only the cloud holds; edges
hold the SubjectPublicKeyInfo PEM of its public key.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from common.files import write_atomic
from common.signing import ALGORITHM, key_id
from protos import policy_pb2

__all__ = ["ALGORITHM", "PolicySigner", "SigningKeyError", "key_id", "load_private_key", "write_keypair"]

PRIVATE_KEY_NAME = "policy-signing.key"
PUBLIC_KEY_NAME = "policy-signing.pub"


class SigningKeyError(ValueError):
    """The signing key cannot be used (missing, not PEM, encrypted, or not Ed25519); the message names the file."""


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key of a PKCS8 PEM file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SigningKeyError(
            f"{path}: policy signing key cannot be read ({err.strerror}); create one with `edgeglm-cloud keygen`"
        ) from err
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise SigningKeyError(f"{path}: not an unencrypted PKCS8 PEM private key ({err})") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: is a {type(key).__name__}, expected an Ed25519 private key")
    return key


def public_pem(private_key: Ed25519PrivateKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of the public half, as edges install it."""
    return private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def write_keypair(folder: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Generate a key pair into `folder` as policy-signing.key (mode 0600) and policy-signing.pub."""
    return write_key_files(folder / PRIVATE_KEY_NAME, folder / PUBLIC_KEY_NAME, overwrite)


def write_key_files(private_path: Path, public_path: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Generate a key pair: the private key (PKCS8 PEM, mode 0600) and the public one (SubjectPublicKeyInfo PEM)."""
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise SigningKeyError(f"{private_path}: a policy signing key is already there; refusing to overwrite it")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    # Whole or not at all: a torn private key would lock every edge out of new policies at the next start.
    write_atomic(private_path, pem, mode=0o600)
    write_atomic(public_path, public_pem(private_key))
    return private_path, public_path


class PolicySigner:
    """Signs policies with one private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        """Keep the key and compute its id."""
        self._key = private_key
        self.key_id = key_id(private_key.public_key())

    @classmethod
    def from_file(cls, path: Path) -> PolicySigner:
        """A signer of the PKCS8 PEM key at `path`."""
        return cls(load_private_key(path))

    @classmethod
    def ephemeral(cls) -> PolicySigner:
        """A signer of a fresh key that lives only in memory (tests, demos without edges that verify)."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half, that edges verify with."""
        return self._key.public_key()

    def public_pem(self) -> bytes:
        """The SubjectPublicKeyInfo PEM of the public half."""
        return public_pem(self._key)

    def sign(self, policy: policy_pb2.Policy) -> policy_pb2.SignedPolicy:
        """The policy serialized once and signed over exactly those bytes."""
        data = policy.SerializeToString()
        return policy_pb2.SignedPolicy(
            policy=data, signature=self._key.sign(data), key_id=self.key_id, algorithm=ALGORITHM
        )
