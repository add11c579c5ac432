"""The one Ed25519 convention of the project: how a signing key is named and how bytes are verified.

Policies (`SignedPolicy`) and model manifests are both signed with the cloud's Ed25519 key: the
signature covers exactly the bytes sent, `algorithm` is "ed25519" and `key_id` is the first 16 hex
digits of sha256 of the raw 32-byte public key. The cloud signs (`cloud.policy.signing`); edges only
verify, with one or several trusted public keys (several while the cloud's key is rotated).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALGORITHM = "ed25519"


class SignatureError(ValueError):
    """Signed bytes that do not verify; the message says which check failed."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 of the raw public key: names the key something was signed with."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def verify_bytes(
    data: bytes,
    signature: bytes,
    signer_key_id: str,
    algorithm: str,
    public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey],
    what: str,
    error: type[SignatureError] = SignatureError,
) -> None:
    """Return when `signature` over `data` holds for the trusted key named `signer_key_id`; else
    `error` (a `SignatureError`) naming `what` (e.g. "policy", "model manifest") and the failed check."""
    if algorithm != ALGORITHM:
        raise error(f"{what}: signature algorithm {algorithm!r} is not supported (expected 'ed25519')")
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    by_id = {key_id(key): key for key in keys}
    public_key = by_id.get(signer_key_id)
    if public_key is None:
        raise error(
            f"{what}: signed with unknown key id {signer_key_id!r}; this edge trusts "
            f"{', '.join(sorted(by_id)) or 'no key'} (install the cloud's current public key if it rotated)"
        )
    try:
        public_key.verify(signature, data)
    except InvalidSignature as err:
        raise error(f"{what}: bad signature by key {signer_key_id} over {len(data)} bytes (altered or forged)") from err
