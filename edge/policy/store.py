"""The policy in force on one edge: verified, checked, applied, persisted and restored.

A policy offered by the cloud is applied only when its signature holds, its values are within
bounds, its scope names this edge (the fleet, this edge's site, or this edge) and its version is
newer than the one in force. Anything else is refused, logged and counted in
`policies_rejected{reason}` with reason "signature", "invalid", "scope", "stale" or "expired" (its
signed `not_after` has passed: old bytes replayed); the policy in force stays. Expiry is checked on
arrival only: the policy in force, and the one restored at start, stay in force past it. An applied
policy is persisted as the SignedPolicy bytes received, so it is verified again at the next start and
a tampered or corrupt file is never trusted.

Persisting is a small synchronous write; policies arrive rarely, so it runs on the caller's thread.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.files import write_atomic
from edge.convert import policy_from_pb
from edge.metrics import EdgeMetrics
from edge.policy.settings import EdgePolicy
from edge.policy.signing import PolicySignatureError, parse_signed, verify
from protos import policy_pb2
from protos.policy_settings import InvalidPolicyError

logger = logging.getLogger(__name__)

POLICY_FILE = "policy.pb"
RejectReason = Literal["signature", "invalid", "scope", "stale", "expired"]
PolicyListener = Callable[[EdgePolicy], None]
# The diff logged on apply lists at most this many changed settings, then "(+N more)".
MAX_DIFF_ITEMS = 20


@dataclass(frozen=True)
class ApplyResult:
    """The outcome of offering a policy: applied, or refused with a reason and a message for people."""

    applied: bool
    reason: RejectReason | None
    message: str
    policy: EdgePolicy


class _RefusedError(Exception):
    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason
        self.message = message


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths of a dumped model: {"mining.default_band.low": 0.25, ...}."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def policy_diff(old: EdgePolicy, new: EdgePolicy) -> list[str]:
    """Each changed setting as `path old -> new` (version and scope left out), sorted by path."""
    before = flatten(old.model_dump(exclude={"version", "scope", "scope_id"}))
    after = flatten(new.model_dump(exclude={"version", "scope", "scope_id"}))
    changes = []
    for path in sorted(before.keys() | after.keys()):
        was, now = before.get(path, "unset"), after.get(path, "unset")
        if was != now:
            changes.append(f"{path} {_show(was)} -> {_show(now)}")
    return changes


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def describe_change(old: EdgePolicy, new: EdgePolicy) -> str:
    """One log line: `policy v3 -> v4 (fleet): mining.default_band.low 0.25 -> 0.35, ...`."""
    changes = policy_diff(old, new)
    scope = new.scope if not new.scope_id else f"{new.scope} {new.scope_id}"
    head = f"policy v{old.version} -> v{new.version} ({scope})"
    if not changes:
        return f"{head}: no setting changed"
    shown = ", ".join(changes[:MAX_DIFF_ITEMS])
    more = f" (+{len(changes) - MAX_DIFF_ITEMS} more)" if len(changes) > MAX_DIFF_ITEMS else ""
    return f"{head}: {shown}{more}"


class PolicyStore:
    """Holds the edge's policy; `offer` what the cloud sends, `load` what was persisted, `subscribe` to changes."""

    def __init__(
        self,
        state_dir: Path,
        public_key: Ed25519PublicKey | Sequence[Ed25519PublicKey] | None,
        metrics: EdgeMetrics,
        *,
        edge_id: str,
        site_id: str,
        default: EdgePolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._path = state_dir / POLICY_FILE
        self._public_key = public_key
        self._metrics = metrics
        self._edge_id = edge_id
        self._site_id = site_id
        self._current = default or EdgePolicy.model_validate({})
        self._listeners: list[PolicyListener] = []
        metrics.policy_version.set(self._current.version)

    @property
    def current(self) -> EdgePolicy:
        """The policy in force (the built-in default until one is applied or restored)."""
        return self._current

    @property
    def path(self) -> Path:
        """Where the applied policy is persisted."""
        return self._path

    def subscribe(self, listener: PolicyListener) -> None:
        """Call `listener` with the new policy after each apply or restore."""
        self._listeners.append(listener)

    def offer(self, signed: policy_pb2.SignedPolicy) -> ApplyResult:
        """Apply `signed` if it verifies, is valid, is meant for this edge and is newer; else refuse it."""
        try:
            policy = self._check(signed)
            if policy.not_after is not None and self._clock() > policy.not_after:
                expired = datetime.datetime.fromtimestamp(policy.not_after, datetime.UTC).isoformat(timespec="seconds")
                raise _RefusedError("expired", f"policy v{policy.version} expired at {expired} (old bytes replayed?)")
        except _RefusedError as refused:
            return self._refuse(refused.reason, refused.message, stored=False)
        message = describe_change(self._current, policy)
        self._current = policy
        logger.info("%s", message)
        self._metrics.policies_applied.inc()
        self._metrics.policy_version.set(policy.version)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self._path, signed.SerializeToString())
        except OSError as err:
            # The policy is in force regardless; only a restart would fall back to an older one.
            logger.error("policy v%d applied but not persisted to %s: %s", policy.version, self._path, err)
        self._notify(policy)
        return ApplyResult(True, None, message, policy)

    def load(self) -> EdgePolicy:
        """Restore the persisted policy, verified again; a missing, corrupt or tampered file leaves the default."""
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            logger.info("no persisted policy at %s: policy v%d in force", self._path, self._current.version)
            return self._current
        except OSError as err:
            logger.warning("persisted policy %s cannot be read (%s): ignored", self._path, err)
            return self._current
        try:
            policy = self._check(parse_signed(data))
        except PolicySignatureError as err:
            self._refuse("signature", str(err), stored=True)
            return self._current
        except _RefusedError as refused:
            self._refuse(refused.reason, refused.message, stored=True)
            return self._current
        self._current = policy
        self._metrics.policy_version.set(policy.version)
        logger.info("restored policy v%d (%s) from %s", policy.version, policy.scope, self._path)
        self._notify(policy)
        return policy

    def _check(self, signed: policy_pb2.SignedPolicy) -> EdgePolicy:
        if self._public_key is None:
            raise _RefusedError("signature", "no policy public key is configured, so no cloud policy can be trusted")
        try:
            pb = verify(signed, self._public_key)
        except PolicySignatureError as err:
            raise _RefusedError("signature", str(err)) from err
        try:
            policy = policy_from_pb(pb, self._current)
        except InvalidPolicyError as err:
            raise _RefusedError("invalid", str(err)) from err
        mismatch = self._scope_mismatch(policy)
        if mismatch:
            raise _RefusedError("scope", f"policy v{policy.version}: {mismatch}")
        if policy.version <= self._current.version:
            raise _RefusedError(
                "stale", f"policy v{policy.version} is not newer than v{self._current.version} already in force"
            )
        return policy

    def _scope_mismatch(self, policy: EdgePolicy) -> str | None:
        if policy.scope == "site" and policy.scope_id != self._site_id:
            return f"scoped to site {policy.scope_id!r}, this edge is in site {self._site_id!r}"
        if policy.scope == "edge" and policy.scope_id != self._edge_id:
            return f"scoped to edge {policy.scope_id!r}, this edge is {self._edge_id!r}"
        return None

    def _refuse(self, reason: RejectReason, message: str, *, stored: bool) -> ApplyResult:
        self._metrics.policies_rejected.labels(reason).inc()
        kept = f"policy v{self._current.version} stays in force"
        if stored:
            logger.warning("persisted policy %s ignored (%s): %s; %s", self._path, reason, message, kept)
        elif reason == "stale":
            logger.info("policy refused (stale): %s", message)
        else:
            logger.warning("policy refused (%s): %s; %s", reason, message, kept)
        return ApplyResult(False, reason, message, self._current)

    def _notify(self, policy: EdgePolicy) -> None:
        for listener in self._listeners:
            listener(policy)
