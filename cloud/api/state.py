"""What the admin API shows and changes, shared by its route modules."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException

from cloud.metrics import CloudMetrics
from cloud.policy import PolicyEngine
from cloud.server import FleetStatus, Health
from cloud.store import VerdictRepository


@dataclass(frozen=True, slots=True)
class AdminState:
    """The service's parts the admin API reads and changes; `store` None serves no verdicts or history."""

    policy: PolicyEngine
    fleet: FleetStatus
    metrics: CloudMetrics
    health: Health
    store: VerdictRepository | None = None


def require_store(state: AdminState) -> VerdictRepository:
    """The store, or 503 when this app was built without one."""
    if state.store is None:
        raise HTTPException(503, "this admin API has no verdict store (AdminState.store is None)")
    return state.store
