"""What the admin API shows and changes, shared by its route modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import HTTPException

from cloud.metrics import CloudMetrics
from cloud.models.registry import ModelRegistry
from cloud.models.rollout import RolloutController
from cloud.policy import PolicyEngine
from cloud.server import FleetStatus, Health
from cloud.store import VerdictRepository


class ClosedLoopView(Protocol):
    """The closed-loop band controller as the admin API sees it."""

    def snapshot(self) -> dict[str, Any]:
        """The loop's targets and, per edge and class, band, window estimates and moves."""


@dataclass(frozen=True, slots=True)
class AdminState:
    """The service's parts the admin API reads and changes; `store` None serves no verdicts or history."""

    policy: PolicyEngine
    fleet: FleetStatus
    metrics: CloudMetrics
    health: Health
    store: VerdictRepository | None = None
    closed_loop: ClosedLoopView | None = None  # None: policy.closed_loop is off
    rollout: RolloutController | None = None  # None: no model registry (models.registry unset)
    models: ModelRegistry | None = None


def require_store(state: AdminState) -> VerdictRepository:
    """The store, or 503 when this app was built without one."""
    if state.store is None:
        raise HTTPException(503, "this admin API has no verdict store (AdminState.store is None)")
    return state.store
