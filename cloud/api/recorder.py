"""What the admin API shows beyond the live state, written to the store as it happens.

`PolicyRecorder` keeps every policy version the engine publishes (it listens through
`PolicyEngine.subscribe`, and records the layers in force at start); the reason of a change (an admin
request's, the closed loop's) is passed down in a context variable by the task that made it
(`cloud.policy.engine.policy_reason`).
`EdgeSnapshotter` copies the fleet's in-memory records to the store every few seconds, so the
dashboard still knows the edges after a restart.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cloud.policy import PolicyEngine
from cloud.policy.engine import PolicyChange, change_reason
from cloud.server import FleetStatus
from cloud.store import EdgeSnapshot, PolicyRecord, StoreError, VerdictRepository
from cloud.store.records import ScopeName
from common.periodic import FailureCounter, PeriodicTask

logger = logging.getLogger(__name__)
_LAYER_KEYS: dict[str, str] = {"site": "sites", "edge": "edges"}
UNSTATED = "published by the policy engine (no reason given)"
AT_START = "in force at start (cloud.yaml or a change before the restart)"


def _layer(snapshot: dict[str, Any], scope: str, scope_id: str) -> dict[str, Any] | None:
    if scope == "fleet":
        layer: dict[str, Any] = snapshot["fleet"]
        return layer
    found: dict[str, Any] | None = snapshot.get(_LAYER_KEYS[scope], {}).get(scope_id)
    return found


class PolicyRecorder:
    """Writes each published policy version, with its layer's settings, to the policy history."""

    def __init__(self, engine: PolicyEngine, store: VerdictRepository) -> None:
        """Record what `engine` publishes into `store` (call `start` to subscribe)."""
        self._engine = engine
        self._store = store

    async def start(self) -> None:
        """Record the layers in force now (versions already kept are left as they are) and subscribe."""
        snapshot = self._engine.snapshot()
        layers: list[tuple[ScopeName, str, dict[str, Any]]] = [("fleet", "", snapshot["fleet"])]
        layers += [("site", key, layer) for key, layer in snapshot["sites"].items()]
        layers += [("edge", key, layer) for key, layer in snapshot["edges"].items()]
        for scope, scope_id, layer in sorted(layers, key=lambda item: int(item[2]["version"])):
            record = PolicyRecord(
                int(layer["version"]), scope, scope_id, layer["settings"], float(layer["issued_at"]), AT_START
            )
            await self._store.add_policy(record)
        self._engine.subscribe(self._on_change)

    async def _on_change(self, change: PolicyChange) -> None:
        layer = _layer(self._engine.snapshot(), change.scope, change.scope_id)
        settings = None if layer is None or layer.get("version") != change.version else layer["settings"]
        created_at = float(layer["issued_at"]) if layer is not None and settings is not None else time.time()
        reason = change_reason() or ("override removed" if settings is None else UNSTATED)
        record = PolicyRecord(change.version, change.scope, change.scope_id, settings, created_at, reason)
        try:
            await self._store.add_policy(record)
        except StoreError:
            # The policy is published all the same; only its history line is missing.
            logger.exception("policy v%d not recorded in the history", change.version)


class EdgeSnapshotter:
    """Every `interval_s`, writes the records of the edges heard from since the last write."""

    def __init__(
        self, fleet: FleetStatus, store: VerdictRepository, interval_s: float, failures: FailureCounter | None = None
    ) -> None:
        """Copy `fleet` into `store` every `interval_s` seconds once started; `failures` counts the failed writes."""
        self._fleet = fleet
        self._store = store
        self._written: dict[str, float] = {}  # edge_id -> last_seen of the record last written
        self._periodic = PeriodicTask("edge-snapshots", self.write_changed, interval_s, failures=failures, log=logger)

    def start(self) -> None:
        """Start the periodic task."""
        self._periodic.start()

    async def write_changed(self) -> int:
        """Write the records that changed since the last write now; returns how many."""
        now = time.time()
        changed = [r for r in self._fleet.snapshot() if self._written.get(r["edge_id"]) != r["last_seen"]]
        if changed:
            await self._store.add_edge_snapshots([EdgeSnapshot(r["edge_id"], now, r) for r in changed])
            self._written.update({r["edge_id"]: r["last_seen"] for r in changed})
        return len(changed)

    async def stop(self) -> None:
        """Stop the task and write the last changes (a closed store is logged, not raised)."""
        await self._periodic.stop()
        try:
            await self.write_changed()
        except StoreError:
            logger.exception("last edge snapshots not written")
