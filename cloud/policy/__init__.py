"""Policies in the cloud: settings and their bounds, the engine that versions and pushes them, signing."""

from cloud.policy.engine import PolicyChange, PolicyEngine, PolicyListener
from cloud.policy.settings import (
    Band,
    GateSettings,
    MiningSettings,
    ModelRef,
    PolicyOverride,
    PolicySettings,
    PolicyValidationError,
    UplinkSettings,
)
from cloud.policy.signing import PolicySigner, SigningKeyError, key_id, load_private_key, write_keypair

__all__ = [
    "Band",
    "GateSettings",
    "MiningSettings",
    "ModelRef",
    "PolicyChange",
    "PolicyEngine",
    "PolicyListener",
    "PolicyOverride",
    "PolicySettings",
    "PolicySigner",
    "PolicyValidationError",
    "SigningKeyError",
    "UplinkSettings",
    "key_id",
    "load_private_key",
    "write_keypair",
]
