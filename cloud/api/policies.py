"""Policy routes: read the layers and their history, set or remove a layer (YAML or JSON bodies).

The writing routes are served twice: under /api (what the dashboard and new tools use) and at their
first paths (/policies/...), which `edgeglm-cloud policy set` and existing scripts use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from cloud.api.recorder import UNSTATED
from cloud.api.state import AdminState, require_store
from cloud.policy import PolicyValidationError
from cloud.policy.engine import policy_reason
from cloud.policy.settings import describe_errors
from cloud.store import PolicyRecord
from protos.policy_settings import PolicySettings, WatchRule

MAX_POLICY_BYTES = 1 << 20
MAX_REASON_CHARS = 500
ReasonQuery = Query("", max_length=MAX_REASON_CHARS, description="Why: kept in the policy history.")


def _invalid(err: PolicyValidationError) -> JSONResponse:
    detail = [{"loc": path, "msg": message} for path, message in err.problems]
    return JSONResponse(status_code=422, content={"error": str(err), "detail": detail})


async def _settings_body(request: Request, state: AdminState, where: str) -> Any:
    """The request body parsed as YAML/JSON; PolicyValidationError (counted) when it is not a policy document."""
    body = await request.body()
    if len(body) > MAX_POLICY_BYTES:
        state.metrics.policies_rejected.inc()
        raise PolicyValidationError(where, [("(body)", f"{len(body)} bytes is above the limit {MAX_POLICY_BYTES}")])
    try:
        return yaml.safe_load(body) if body.strip() else {}
    except yaml.YAMLError as err:
        state.metrics.policies_rejected.inc()
        raise PolicyValidationError(where, [("(body)", f"not valid YAML or JSON: {err}")]) from err


def _watch_rule(body: Any, rule_id: str, where: str, state: AdminState) -> WatchRule:
    """The rule a request body describes, under the path's id; PolicyValidationError (counted) names what is wrong."""
    problems: list[tuple[str, str]] = []
    if not isinstance(body, dict):
        problems.append(("(body)", "expected a mapping with text, labels and optionally camera_ids, zone, severity"))
    elif body.get("rule_id", rule_id) != rule_id:
        problems.append(("rule_id", f"{body['rule_id']!r} differs from the path's {rule_id!r}"))
    else:
        try:
            return WatchRule.model_validate({**body, "rule_id": rule_id})
        except ValidationError as err:
            problems = describe_errors(err, WatchRule)
    state.metrics.policies_rejected.inc()
    raise PolicyValidationError(where, problems)


def _stated(request: Request, reason: str) -> str:
    """What the policy history keeps of a change: the method and path, the reason given, and who made it."""
    return f"{request.method} {request.url.path}" + (f": {reason}" if reason else "") + _by(request)


def _by(request: Request) -> str:
    """ " (by <user>)" when the request named its user (cloud/api/auth.py), for the policy history."""
    user = getattr(request.state, "admin_user", None)
    return f" (by {user})" if user else ""


async def _publish(
    request: Request,
    state: AdminState,
    where: str,
    reason: str,
    set_layer: Callable[[Any], Awaitable[int]],
    scope: str,
    scope_id: str,
) -> JSONResponse:
    stated = _stated(request, reason)
    try:
        body = await _settings_body(request, state, where)
        with policy_reason(stated):
            version = await set_layer(body)
    except PolicyValidationError as err:
        return _invalid(err)
    return JSONResponse({"version": version, "scope": scope, "scope_id": scope_id})


def _writing_routes(state: AdminState) -> APIRouter:
    router = APIRouter()
    policy = state.policy

    @router.put("/policies/fleet")
    async def put_fleet(request: Request, reason: str = ReasonQuery) -> JSONResponse:
        """Replace the fleet policy (YAML or JSON settings); 422 names each invalid field."""
        return await _publish(request, state, "fleet policy", reason, policy.set_fleet, "fleet", "")

    @router.put("/policies/sites/{site_id}")
    async def put_site(site_id: str, request: Request, reason: str = ReasonQuery) -> JSONResponse:
        """Set a site's override: only the fields given differ from the fleet policy."""

        async def set_site(body: Any) -> int:
            return await policy.set_site(site_id, body)

        return await _publish(request, state, f"site {site_id} override", reason, set_site, "site", site_id)

    @router.put("/policies/edges/{edge_id}")
    async def put_edge(edge_id: str, request: Request, reason: str = ReasonQuery) -> JSONResponse:
        """Set an edge's override: only the fields given differ from its site's and the fleet policy."""

        async def set_edge(body: Any) -> int:
            return await policy.set_edge(edge_id, body)

        return await _publish(request, state, f"edge {edge_id} override", reason, set_edge, "edge", edge_id)

    @router.put("/policies/fleet/watch-rules/{rule_id}")
    async def put_watch_rule(rule_id: str, request: Request, reason: str = ReasonQuery) -> JSONResponse:
        """Add a watch rule in plain words to the fleet policy, or replace the one with this id.

        The body (YAML or JSON) holds the rule's text, labels, camera_ids, zone and severity
        (docs/rules.md); 422 names each invalid field. Other rules and settings stay as they are.
        """
        where = f"fleet watch rule {rule_id}"
        stated = _stated(request, reason)
        try:
            body = await _settings_body(request, state, where)
            rule = _watch_rule(body, rule_id, where, state)

            def upsert(fleet: PolicySettings) -> PolicySettings:
                rules = [r for r in fleet.mining.watch_rules if r.rule_id != rule_id]
                at = next((i for i, r in enumerate(fleet.mining.watch_rules) if r.rule_id == rule_id), len(rules))
                rules.insert(at, rule)
                return fleet.model_copy(
                    update={"mining": fleet.mining.model_copy(update={"watch_rules": tuple(rules)})}
                )

            with policy_reason(stated):
                version = await policy.edit_fleet(upsert)
        except PolicyValidationError as err:
            return _invalid(err)
        return JSONResponse({"version": version, "scope": "fleet", "scope_id": "", "rule_id": rule_id})

    @router.delete("/policies/fleet/watch-rules/{rule_id}")
    async def delete_watch_rule(rule_id: str, request: Request, reason: str = ReasonQuery) -> JSONResponse:
        """Remove a watch rule from the fleet policy (404 when the fleet policy has none with this id)."""
        if policy.fleet.mining.rule(rule_id) is None:
            raise HTTPException(404, f"the fleet policy has no watch rule {rule_id!r}")
        stated = _stated(request, reason)

        def remove(fleet: PolicySettings) -> PolicySettings:
            rules = tuple(r for r in fleet.mining.watch_rules if r.rule_id != rule_id)
            return fleet.model_copy(update={"mining": fleet.mining.model_copy(update={"watch_rules": rules})})

        with policy_reason(stated):
            version = await policy.edit_fleet(remove)
        return JSONResponse({"version": version, "scope": "fleet", "scope_id": "", "rule_id": rule_id})

    @router.delete("/policies/edges/{edge_id}")
    async def delete_edge(edge_id: str, request: Request, reason: str = ReasonQuery) -> JSONResponse:
        """Remove an edge's override; the edge gets its site's or the fleet policy under a new version."""
        with policy_reason(_stated(request, reason)):
            version = await policy.clear_override("edge", edge_id)
        return JSONResponse({"version": version, "scope": "fleet", "scope_id": ""})

    @router.delete("/policies/sites/{site_id}")
    async def delete_site(site_id: str, request: Request, reason: str = ReasonQuery) -> JSONResponse:
        """Remove a site's override; its edges get the fleet policy (or their own override) under a new version."""
        with policy_reason(_stated(request, reason)):
            version = await policy.clear_override("site", site_id)
        return JSONResponse({"version": version, "scope": "fleet", "scope_id": ""})

    return router


def _closed_loop_reasons(state: AdminState) -> dict[int, str]:
    """Policy version -> why the closed loop moved bands under it (the engine's listeners do not get reasons)."""
    if state.closed_loop is None:
        return {}
    reasons: dict[int, list[str]] = {}
    for classes in state.closed_loop.snapshot()["edges"].values():
        for label, entry in sorted(classes.items()):
            for move in entry["history"]:
                reasons.setdefault(int(move["version"]), []).append(f"{label} {move['reason']}")
    return {version: "closed loop: " + "; ".join(parts) for version, parts in reasons.items()}


def _shown(record: PolicyRecord, loop_reasons: dict[int, str]) -> dict[str, Any]:
    shown = record.to_json()
    if record.reason == UNSTATED and record.version in loop_reasons:
        shown["reason"] = loop_reasons[record.version]
    return shown


def _reading_routes(state: AdminState) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/policies")
    async def policies(
        limit: int = Query(50, ge=1, le=500, description="History entries per page."),
        before_version: int | None = Query(None, ge=1, description="History page: versions below this one."),
    ) -> dict[str, Any]:
        """The layers in force (fleet, sites, edges) and the published versions, newest first."""
        history = await require_store(state).list_policies(limit, before_version)
        more = len(history) == limit and history[-1].version > 1
        loop_reasons = _closed_loop_reasons(state)
        return {
            "current": state.policy.snapshot(),
            "history": [_shown(record, loop_reasons) for record in history],
            "next_before_version": history[-1].version if more else None,
        }

    @router.get("/policies/{version}")
    async def policy_version(version: int) -> dict[str, Any]:
        """One published version: the layer it changed, its settings, when and why."""
        record = await require_store(state).get_policy(version)
        if record is None:
            raise HTTPException(404, f"policy version {version} is not in the history")
        return _shown(record, _closed_loop_reasons(state))

    return router


def add_policy_routes(app: FastAPI, state: AdminState) -> None:
    """The policy routes, writing ones at /api/policies/... and /policies/..., reading ones under /api."""

    @app.get("/policies", tags=["policies"])
    async def legacy_policies() -> dict[str, Any]:
        """The fleet policy, every site and edge override, and the newest version."""
        return state.policy.snapshot()

    writing = _writing_routes(state)
    app.include_router(_reading_routes(state), tags=["policies"])
    app.include_router(writing, prefix="/api", tags=["policies"])
    app.include_router(writing, tags=["policies (first paths)"])
