"""Model routes (/api/models, /api/rollout): the published edge models and the rollout of one of them.

Reading needs a viewer, starting and steering a rollout an operator (`cloud.api.auth.required_role`).
A rollout that cannot start or an action its stage does not allow is a 409 saying why; a model that
is not published, a 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from cloud.api.state import AdminState
from cloud.models.registry import RegistryError
from cloud.models.rollout import RolloutController, RolloutError

MAX_REASON_CHARS = 500


class RolloutRequest(BaseModel):
    """The model to roll out and its canaries (named, or a share of the connected edges)."""

    name: str = Field(..., min_length=1, max_length=128, description="Published model name.")
    version: str = Field(..., min_length=1, max_length=128, description="Published model version.")
    canaries: list[str] | None = Field(None, max_length=10_000, description="Edges that get it first.")
    canary_fraction: float | None = Field(
        None, gt=0, le=1, description="Else this share of the connected edges (default: models.rollout's)."
    )


class Action(BaseModel):
    """Why an operator steers the rollout (kept in its history)."""

    reason: str = Field("", max_length=MAX_REASON_CHARS)


def _who(request: Request) -> str:
    return str(getattr(request.state, "admin_user", None) or "operator")


def _rollout(state: AdminState) -> RolloutController:
    if state.rollout is None:
        raise HTTPException(503, "this cloud has no model registry (set models.registry in cloud.yaml)")
    return state.rollout


def add_model_routes(app: FastAPI, state: AdminState) -> None:
    """GET /api/models, GET and POST /api/rollout, POST /api/rollout/{pause,resume,promote,rollback}."""
    router = APIRouter(prefix="/api", tags=["models"])

    @router.get("/models")
    async def list_models() -> dict[str, Any]:
        """Every published model with its manifest."""
        if state.models is None:
            return {"models": []}
        return {"models": [m.manifest.model_dump(mode="json") | {"uri": m.uri} for m in state.models.list()]}

    @router.get("/rollout")
    async def rollout() -> dict[str, Any]:
        """The latest rollout: stage, canaries, their health against the baseline, history (`enabled` false:
        this cloud has no model registry)."""
        if state.rollout is None:
            return {"enabled": False, "rollout": None}
        return state.rollout.snapshot()

    @router.post("/rollout", status_code=201)
    async def begin(body: RolloutRequest, request: Request) -> dict[str, Any]:
        """Start rolling out a published model to its canaries."""
        view = _rollout(state)
        try:
            await view.begin(
                body.name, body.version, canaries=body.canaries, fraction=body.canary_fraction, who=_who(request)
            )
        except RegistryError as err:
            raise HTTPException(404, str(err)) from err
        except RolloutError as err:
            raise HTTPException(409, str(err)) from err
        return view.snapshot()

    def steer(name: str, act: Callable[[RolloutController], Callable[[str, str], Awaitable[Any]]]) -> None:
        async def route(body: Action, request: Request) -> dict[str, Any]:
            view = _rollout(state)
            try:
                await act(view)(body.reason, _who(request))
            except RolloutError as err:
                raise HTTPException(409, str(err)) from err
            return view.snapshot()

        route.__doc__ = f"{name.capitalize()} the rollout (409 when its stage does not allow it)."
        router.add_api_route(f"/rollout/{name}", route, methods=["POST"], name=f"rollout_{name}")

    steer("pause", lambda view: view.pause)
    steer("resume", lambda view: view.resume)
    steer("promote", lambda view: view.promote)
    steer("rollback", lambda view: view.roll_back)
    app.include_router(router)
