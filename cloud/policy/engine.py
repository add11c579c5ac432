"""The policy engine: the fleet policy, its site and edge overrides, versions, signatures, and pushes.

Every change (fleet, site or edge) takes the next number of one monotonic counter shared by all
scopes. The policy an edge gets is fleet <- site override <- edge override, versioned with the
highest version among those layers, so any change to a layer an edge depends on gives that edge a
newer version and nothing else changes for the others. Removing an override leaves a tombstone
with a fresh version, so the edge's version still goes up when it falls back to the fleet policy.

The counter and the layers' versions live in a small JSON file next to the verdict store and are
written before a version is published: a restart never reissues a version, and a layer whose
settings did not change across a restart keeps its version (edges are not sent the same policy
again). The settings themselves come from cloud.yaml at start; changes made through the admin API
last until the next restart (write them into cloud.yaml to keep them).

Replicas on one PostgreSQL store share it instead (`shared`, cloud/policy/shared.py): the counter and
every layer's settings are rows there, a change on any replica is pushed by every replica to its own
edges (`follow`), and a layer keeps what the admin API made of it across restarts as long as its
part of cloud.yaml did not change (a changed cloud.yaml layer wins, under a new version).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from cloud.convert import timestamp_from_seconds
from cloud.metrics import CloudMetrics
from cloud.policy.settings import (
    Band,
    ModelRef,
    PolicyOverride,
    PolicySettings,
    PolicyValidationError,
    merge,
    overrides_of,
    parse_override,
    parse_settings,
)
from cloud.policy.shared import PgPolicyState, StoredLayer
from cloud.policy.signing import PolicySigner
from common.files import write_atomic
from protos import policy_pb2
from protos.policy_settings import MAX_POLICY_VERSION, settings_to_pb

logger = logging.getLogger(__name__)

ScopeName = Literal["fleet", "site", "edge"]
_SCOPES: dict[ScopeName, policy_pb2.PolicyScope.ValueType] = {
    "fleet": policy_pb2.POLICY_SCOPE_FLEET,
    "site": policy_pb2.POLICY_SCOPE_SITE,
    "edge": policy_pb2.POLICY_SCOPE_EDGE,
}


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """A new policy version for a scope: the fleet, one site or one edge."""

    scope: ScopeName
    scope_id: str
    version: int


_P = TypeVar("_P", bound=PolicySettings)
PolicyListener = Callable[[PolicyChange], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Layer:
    """One layer's settings (None: a removed override, kept as a tombstone) and the version that set them."""

    settings: PolicySettings | None
    version: int
    issued_at: float
    digest: str


DEFAULT_LIFETIME_S = 30 * 86_400.0  # a signed policy's validity (policy.lifetime_s in cloud.yaml)
_REASON: contextvars.ContextVar[str] = contextvars.ContextVar("policy_change_reason", default="")


@contextlib.contextmanager
def policy_reason(reason: str) -> Iterator[None]:
    """Within this block, policy versions published by this task are recorded with `reason`."""
    token = _REASON.set(reason)
    try:
        yield
    finally:
        _REASON.reset(token)


def change_reason() -> str:
    """The reason the current task gave for the change being published ("" when none)."""
    return _REASON.get()


def _digest(settings: PolicySettings | None) -> str:
    if settings is None:
        return "removed"
    written = settings.model_dump(mode="json") if type(settings) is PolicySettings else overrides_of(settings)
    return hashlib.sha256(json.dumps(written, sort_keys=True).encode()).hexdigest()


def _key(scope: ScopeName, scope_id: str) -> str:
    return "fleet" if scope == "fleet" else f"{scope}:{scope_id}"


def _scope_of(key: str) -> tuple[ScopeName, str]:
    """The scope and scope id a layer key names (the inverse of `_key`)."""
    if key.startswith("site:"):
        return "site", key.removeprefix("site:")
    if key.startswith("edge:"):
        return "edge", key.removeprefix("edge:")
    return "fleet", ""


class PolicyEngine:
    """Holds the layers, versions and signs them, and tells listeners about every change."""

    def __init__(
        self,
        signer: PolicySigner,
        state_path: Path,
        metrics: CloudMetrics,
        fleet: PolicySettings | None = None,
        sites: Mapping[str, PolicyOverride] | None = None,
        edges: Mapping[str, PolicyOverride] | None = None,
        lifetime_s: float = DEFAULT_LIFETIME_S,
        clock: Callable[[], float] = time.time,
        shared: PgPolicyState | None = None,
    ) -> None:
        """Load the version state from `state_path` (created if missing) and version the given layers.

        Each signed policy carries `not_after` = signing time + `lifetime_s`; it is signed again once
        half its lifetime has passed, so an edge never receives one close to expiry.
        """
        self._signer = signer
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._state_path = state_path
        self._metrics = metrics
        self._listeners: list[PolicyListener] = []
        self._lock = asyncio.Lock()
        # (edge, site) -> (refresh at, the version it was signed for, signed)
        self._cache: dict[tuple[str, str], tuple[float, int, policy_pb2.SignedPolicy]] = {}
        self._shared = shared
        self._config_digests: dict[str, str] = {}  # layer -> digest of what cloud.yaml gave it (shared state)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._caught_up = 0  # shared state: every version up to this one is applied here
        wanted: dict[str, PolicySettings | None] = {"fleet": fleet or PolicySettings()}
        wanted |= {_key("site", s): o for s, o in (sites or {}).items()}
        wanted |= {_key("edge", e): o for e, o in (edges or {}).items()}
        self._layers: dict[str, _Layer] = {}
        if shared is not None:
            self._last_version = 0
            self._reconcile(shared, wanted)
            return
        self._last_version, persisted = self._read_state()
        for key in persisted:
            wanted.setdefault(key, None)  # an override gone from the config since the last run: a tombstone
        for key, settings in wanted.items():
            old = persisted.get(key)
            digest = _digest(settings)
            if old is not None and old.digest == digest:
                self._layers[key] = dataclasses.replace(old, settings=settings)
            else:
                if self._last_version >= MAX_POLICY_VERSION:
                    raise RuntimeError(
                        f"{state_path}: the last policy version is {self._last_version}; no edge accepts more"
                    )
                self._last_version += 1
                self._layers[key] = _Layer(settings, self._last_version, time.time(), digest)
        self._write_state()

    @property
    def version(self) -> int:
        """The newest version issued."""
        return self._last_version

    @property
    def key_id(self) -> str:
        """Id of the key policies are signed with."""
        return self._signer.key_id

    @property
    def fleet(self) -> PolicySettings:
        """The fleet policy's settings."""
        settings = self._layers["fleet"].settings
        assert settings is not None  # the fleet layer is never removed
        return settings

    def subscribe(self, listener: PolicyListener) -> None:
        """Call `listener` after every new version (the gRPC server pushes to its sessions from there)."""
        self._listeners.append(listener)

    def effective(self, edge_id: str, site_id: str = "") -> tuple[PolicySettings, int, ScopeName, str, float]:
        """The merged settings of an edge, its version, scope and scope id, and when that version was issued."""
        fleet = self._layers["fleet"]
        site = self._layers.get(_key("site", site_id)) if site_id else None
        edge = self._layers.get(_key("edge", edge_id))
        layers = [layer for layer in (fleet, site, edge) if layer is not None]
        newest = max(layers, key=lambda layer: layer.version)
        overrides = [layer.settings for layer in (site, edge) if layer is not None and layer.settings is not None]
        settings = merge(self.fleet, *overrides, where=f"policy of edge {edge_id}")
        scope: ScopeName = "fleet"
        scope_id = ""
        if edge is not None and edge.settings is not None:
            scope, scope_id = "edge", edge_id
        elif site is not None and site.settings is not None:
            scope, scope_id = "site", site_id
        return settings, newest.version, scope, scope_id, newest.issued_at

    def policy_for(self, edge_id: str, site_id: str = "") -> policy_pb2.SignedPolicy:
        """The signed policy in force for an edge: fleet <- its site's override <- its own override."""
        now = self._clock()
        cached = self._cache.get((edge_id, site_id))
        # A cached policy serves only while it is the version in force: a change being published (its
        # state file written off the loop) is in force before the cache is cleared, and a caller in that
        # moment (the MQTT bridge, for an edge's status) must not get the old bytes under the new number.
        if cached is not None and now < cached[0] and cached[1] == self.version_for(edge_id, site_id):
            return cached[2]
        settings, version, scope, scope_id, issued_at = self.effective(edge_id, site_id)
        policy = policy_pb2.Policy(
            version=version,
            scope=_SCOPES[scope],
            scope_id=scope_id,
            issued_at=timestamp_from_seconds(issued_at),
            not_after=timestamp_from_seconds(now + self._lifetime_s),
        )
        settings_to_pb(settings, policy)
        signed = self._signer.sign(policy)
        self._cache[(edge_id, site_id)] = (now + self._lifetime_s / 2, version, signed)
        return signed

    def version_for(self, edge_id: str, site_id: str = "") -> int:
        """The version of the policy in force for an edge (cheaper than `policy_for`)."""
        keys = ["fleet", _key("site", site_id) if site_id else "", _key("edge", edge_id)]
        return max(self._layers[k].version for k in keys if k in self._layers)

    async def set_fleet(self, settings: PolicySettings | Mapping[str, Any]) -> int:
        """Replace the fleet policy; returns the new version (PolicyValidationError when invalid, counted)."""
        async with self._lock:
            return await self._replace_fleet(settings)

    async def edit_fleet(self, change: Callable[[PolicySettings], PolicySettings | Mapping[str, Any]]) -> int:
        """Replace the fleet policy with `change(current fleet settings)`, with no other change in between.

        For edits of one part (a watch rule, the model) that must not undo a change made meanwhile;
        `change` may raise PolicyValidationError to refuse (counted like an invalid policy).
        """
        async with self._lock:
            try:
                changed = change(self.fleet)
            except PolicyValidationError:
                self._metrics.policies_rejected.inc()
                raise
            return await self._replace_fleet(changed)

    async def _replace_fleet(self, settings: PolicySettings | Mapping[str, Any]) -> int:
        parsed = self._checked(lambda: parse_settings(settings, "fleet policy"))
        for key, layer in self._layers.items():
            if key != "fleet" and layer.settings is not None:
                self._check_merge(parsed, layer.settings, f"{key.replace(':', ' ')} override over the new fleet policy")
        return await self._publish("fleet", "", parsed)

    async def set_site(self, site_id: str, settings: PolicySettings | Mapping[str, Any]) -> int:
        """Set a site's override (fields not written follow the fleet); returns the new version."""
        async with self._lock:
            where = f"site {site_id} override"
            parsed = self._checked(lambda: parse_override(settings, where))
            self._check_merge(self.fleet, parsed, where)
            return await self._publish("site", site_id, parsed)

    async def set_edge(self, edge_id: str, settings: PolicySettings | Mapping[str, Any]) -> int:
        """Set an edge's override (fields not written follow its site and the fleet); returns the new version."""
        async with self._lock:
            where = f"edge {edge_id} override"
            parsed = self._checked(lambda: parse_override(settings, where))
            self._check_merge(self.fleet, parsed, where)
            return await self._publish("edge", edge_id, parsed)

    async def clear_override(self, scope: Literal["site", "edge"], scope_id: str) -> int:
        """Remove a site or edge override; its edges go back to what is underneath, under a new version."""
        async with self._lock:
            return await self._publish(scope, scope_id, None)

    async def adjust_bands(self, edge_id: str, bands: Mapping[str, Band], reason: str) -> int:
        """Move one edge's uncertainty bands (the closed loop's `BandController`, cloud/policy/loop.py).

        The controller keeps, per edge and class, recent (edge score, cloud verdict) pairs (fed by
        the ingest core's observer hook) and computes bands that keep recall of cloud-confirmed
        events at target with the smallest uplink; it calls this with them. The bands become part of
        the edge's override (other written fields stay), so they are versioned, signed, persisted
        and pushed like any change.
        """
        return await self.adjust_loop(edge_id, bands, {}, reason)

    async def adjust_mining(self, edge_id: str, fields: Mapping[str, Any], reason: str) -> int:
        """Set mining fields in one edge's override (the closed loop's rules), as a new signed version."""
        current = self._layers.get(_key("edge", edge_id))
        written = overrides_of(current.settings) if current is not None and current.settings is not None else {}
        mining = {**written.get("mining", {}), **fields}
        logger.info("edge %s: adjusting %s (%s)", edge_id, ", ".join(sorted(fields)), reason)
        with policy_reason(reason):  # the policy history keeps why
            return await self.set_edge(edge_id, {**written, "mining": mining})

    async def adjust_model(self, edge_id: str, model: ModelRef | None, reason: str) -> int:
        """Name the model one edge runs in its override (a rollout's canary), or drop that so it follows
        its site and the fleet again (None), as a new signed version."""
        current = self._layers.get(_key("edge", edge_id))
        written = overrides_of(current.settings) if current is not None and current.settings is not None else {}
        written.pop("model", None)
        logger.info(
            "edge %s: model %s (%s)", edge_id, f"{model.name} {model.version}" if model else "of the fleet", reason
        )
        with policy_reason(reason):
            if model is not None:
                return await self.set_edge(edge_id, {**written, "model": model.model_dump()})
            if written:
                return await self.set_edge(edge_id, written)
            return await self.clear_override("edge", edge_id)

    async def set_fleet_model(self, model: ModelRef | None, reason: str) -> int:
        """Name the model every edge runs (unless an override names another), as a new signed version."""
        logger.info("fleet: model %s (%s)", f"{model.name} {model.version}" if model else "unset", reason)
        with policy_reason(reason):
            return await self.edit_fleet(lambda fleet: fleet.model_copy(update={"model": model}))

    async def adjust_loop(
        self,
        edge_id: str,
        bands: Mapping[str, Band],
        cameras: Mapping[str, Mapping[str, float]],
        reason: str,
    ) -> int:
        """Move bands and per-camera mining values of one edge at once (one closed-loop evaluation), one version.

        `cameras` maps a camera id to the fields of its `mining.cameras` entry that change; the
        entry's other written fields, other cameras' entries and other bands stay.
        """
        current = self._layers.get(_key("edge", edge_id))
        written = overrides_of(current.settings) if current is not None and current.settings is not None else {}
        mining = written.get("mining", {})
        fields: dict[str, Any] = {}
        if bands:
            fields["bands"] = {**mining.get("bands", {}), **{label: b.model_dump() for label, b in bands.items()}}
        if cameras:
            entries = dict(mining.get("cameras", {}))
            for camera_id, values in cameras.items():
                entries[camera_id] = {**entries.get(camera_id, {}), **values}
            fields["cameras"] = entries
        return await self.adjust_mining(edge_id, fields, reason)

    def snapshot(self) -> dict[str, Any]:
        """Versions and written settings of every layer, for the admin API."""

        def show(layer: _Layer) -> dict[str, Any]:
            return {"version": layer.version, "issued_at": layer.issued_at, "settings": self._written(layer)}

        result: dict[str, Any] = {"version": self._last_version, "key_id": self.key_id}
        result["fleet"] = show(self._layers["fleet"])
        for scope in ("site", "edge"):
            prefix = f"{scope}:"
            result[f"{scope}s"] = {
                key.removeprefix(prefix): show(layer)
                for key, layer in sorted(self._layers.items())
                if key.startswith(prefix) and layer.settings is not None
            }
        return result

    @staticmethod
    def _written(layer: _Layer) -> dict[str, Any] | None:
        if layer.settings is None:
            return None
        if type(layer.settings) is PolicySettings:
            return layer.settings.model_dump(mode="json")
        return overrides_of(layer.settings)

    def _checked(self, parse: Callable[[], _P]) -> _P:
        try:
            return parse()
        except PolicyValidationError:
            self._metrics.policies_rejected.inc()
            raise

    def _check_merge(self, base: PolicySettings, override: PolicySettings, where: str) -> None:
        self._checked(lambda: merge(base, override, where=where))

    async def _publish(self, scope: ScopeName, scope_id: str, settings: PolicySettings | None) -> int:
        key = _key(scope, scope_id)
        if settings is None and self._layers.get(key, _Layer(None, 0, 0.0, "")).settings is None:
            return self._last_version  # nothing to remove
        if self._last_version >= MAX_POLICY_VERSION:
            raise PolicyValidationError(
                f"{scope} policy", [("version", f"the last version is {self._last_version}; no edge accepts more")]
            )
        if self._shared is not None:
            layer = _Layer(settings, 0, time.time(), _digest(settings))
            version = await asyncio.to_thread(self._publish_shared, key, layer, self._config_digests.get(key, ""))
            self._layers[key] = dataclasses.replace(layer, version=version)
            self._last_version = max(self._last_version, version)
        else:
            self._last_version += 1
            self._layers[key] = _Layer(settings, self._last_version, time.time(), _digest(settings))
            await asyncio.to_thread(self._write_state)
        self._cache.clear()
        self._metrics.policies_published.labels(scope).inc()
        change = PolicyChange(scope, scope_id, self._last_version)
        logger.info("policy v%d published for %s%s", change.version, scope, f" {scope_id}" if scope_id else "")
        for listener in list(self._listeners):
            try:
                await listener(change)
            except Exception:
                logger.exception("policy listener failed on v%d", change.version)
        return change.version

    def _publish_shared(self, key: str, layer: _Layer, config_digest: str) -> int:
        """Store `layer` under the shared counter's next version (blocking)."""
        assert self._shared is not None
        stored = StoredLayer(self._written(layer), 0, layer.issued_at, layer.digest, config_digest)
        return self._shared.publish(key, stored, self._last_version)

    def _reconcile(self, shared: PgPolicyState, wanted: dict[str, PolicySettings | None]) -> None:
        """Take the shared layers, publishing those cloud.yaml changed since they took it (blocking)."""
        self._last_version, stored = shared.load()
        self._caught_up = self._last_version
        for key, settings in wanted.items():
            digest = _digest(settings)
            self._config_digests[key] = digest
            found = stored.get(key)
            if found is not None and found.config_digest == digest:
                self._layers[key] = self._from_stored(key, found)
                continue
            layer = _Layer(settings, 0, time.time(), digest)
            version = self._publish_shared(key, layer, digest)
            self._layers[key] = dataclasses.replace(layer, version=version)
            self._last_version = max(self._last_version, version)
        for key, found in stored.items():
            if key in wanted:
                continue
            self._config_digests[key] = found.config_digest
            if found.config_digest not in ("", "removed") and found.settings is not None:
                # cloud.yaml had this override and no longer has it: removed, under a new version
                self._config_digests[key] = "removed"
                layer = _Layer(None, 0, time.time(), "removed")
                version = self._publish_shared(key, layer, "removed")
                self._layers[key] = dataclasses.replace(layer, version=version)
                self._last_version = max(self._last_version, version)
            else:
                self._layers[key] = self._from_stored(key, found)

    def _from_stored(self, key: str, found: StoredLayer) -> _Layer:
        where = "fleet policy" if key == "fleet" else f"{key.replace(':', ' ')} override"
        settings: PolicySettings | None = None
        if found.settings is not None and key == "fleet":
            settings = parse_settings(found.settings, where)
        elif found.settings is not None:
            settings = parse_override(found.settings, where)
        return _Layer(settings, found.version, found.issued_at, found.digest)

    def follow_from(self, loop: asyncio.AbstractEventLoop) -> None:
        """Shared state: take every other replica's changes and push them, on `loop`, to this one's edges
        (from now on; blocking until the listener is in place)."""
        if self._shared is None:
            return
        self._loop = loop

        def changed(_version: int) -> None:
            loop.call_soon_threadsafe(lambda: loop.create_task(self._catch_up(), name="policy-catch-up"))

        self._shared.listen(changed)

    async def _catch_up(self) -> None:
        """Apply the shared layers changed since the last catch-up that are newer than ours, and tell the
        listeners (the edges get them)."""
        assert self._shared is not None
        last, stored = await asyncio.to_thread(self._shared.load, self._caught_up)
        changes = []
        async with self._lock:
            for key, found in stored.items():
                local = self._layers.get(key)
                if local is not None and found.version <= local.version:
                    continue
                self._layers[key] = self._from_stored(key, found)
                self._config_digests[key] = found.config_digest
                changes.append(PolicyChange(*_scope_of(key), found.version))
            self._last_version = max(self._last_version, last)
            self._caught_up = max(self._caught_up, last)
            if changes:
                self._cache.clear()
        for change in sorted(changes, key=lambda c: c.version):
            logger.info("policy v%d from another replica for %s %s", change.version, change.scope, change.scope_id)
            for listener in list(self._listeners):
                try:
                    await listener(change)
                except Exception:
                    logger.exception("policy listener failed on v%d", change.version)

    def close(self) -> None:
        """Stop following the shared state (blocking: the listener's thread ends)."""
        if self._shared is not None:
            self._shared.close()

    def _read_state(self) -> tuple[int, dict[str, _Layer]]:
        try:
            raw = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return 0, {}
        except (OSError, ValueError) as err:
            raise RuntimeError(
                f"{self._state_path}: policy version state unreadable ({err}); restore it or remove it only if "
                "every edge may be reset to versions starting again at 1"
            ) from err
        layers = {
            key: _Layer(None, int(entry["version"]), float(entry["issued_at"]), str(entry["digest"]))
            for key, entry in raw.get("layers", {}).items()
        }
        last = int(raw.get("last_version", 0))
        if not 0 <= last <= MAX_POLICY_VERSION or any(layer.version > last for layer in layers.values()):
            raise RuntimeError(
                f"{self._state_path}: policy version state is corrupt (last_version {last}, outside 0-"
                f"{MAX_POLICY_VERSION} or below a layer's version); restore it from a backup"
            )
        return last, layers

    def _write_state(self) -> None:
        state = {
            "last_version": self._last_version,
            "layers": {
                key: {"version": layer.version, "issued_at": layer.issued_at, "digest": layer.digest}
                for key, layer in sorted(self._layers.items())
            },
        }
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self._state_path, json.dumps(state, indent=1).encode())
