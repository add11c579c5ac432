"""The admin HTTP API (FastAPI): health, Prometheus metrics, policies and fleet status.

JSON in and out, for people and their tools; the edges never use it (they speak protobuf over gRPC).
Policy bodies may be YAML or JSON (a JSON document is YAML too). It has no authentication: bind it
to a private address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud.metrics import CloudMetrics
from cloud.policy import PolicyEngine, PolicyValidationError
from cloud.server import FleetStatus, Health

MAX_POLICY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class AdminState:
    """What the admin API shows and changes."""

    policy: PolicyEngine
    fleet: FleetStatus
    metrics: CloudMetrics
    health: Health


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


def create_app(state: AdminState) -> FastAPI:
    """The admin app over one service's state."""
    app = FastAPI(title="EdgeGLM cloud admin", version="1", docs_url="/docs", redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while the service is SERVING, 503 otherwise."""
        status = state.health.status()
        code = 200 if status == "SERVING" else 503
        return JSONResponse(status_code=code, content={"status": status, "policy_version": state.policy.version})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/policies")
    async def policies() -> dict[str, Any]:
        """The fleet policy, every site and edge override, and the newest version."""
        return state.policy.snapshot()

    @app.put("/policies/fleet")
    async def put_fleet(request: Request) -> JSONResponse:
        """Replace the fleet policy (YAML or JSON settings); 422 names each invalid field."""
        try:
            version = await state.policy.set_fleet(await _settings_body(request, state, "fleet policy"))
        except PolicyValidationError as err:
            return _invalid(err)
        return JSONResponse({"version": version, "scope": "fleet", "scope_id": ""})

    @app.put("/policies/sites/{site_id}")
    async def put_site(site_id: str, request: Request) -> JSONResponse:
        """Set a site's override: only the fields given differ from the fleet policy."""
        where = f"site {site_id} override"
        try:
            version = await state.policy.set_site(site_id, await _settings_body(request, state, where))
        except PolicyValidationError as err:
            return _invalid(err)
        return JSONResponse({"version": version, "scope": "site", "scope_id": site_id})

    @app.put("/policies/edges/{edge_id}")
    async def put_edge(edge_id: str, request: Request) -> JSONResponse:
        """Set an edge's override: only the fields given differ from its site's and the fleet policy."""
        where = f"edge {edge_id} override"
        try:
            version = await state.policy.set_edge(edge_id, await _settings_body(request, state, where))
        except PolicyValidationError as err:
            return _invalid(err)
        return JSONResponse({"version": version, "scope": "edge", "scope_id": edge_id})

    @app.delete("/policies/edges/{edge_id}")
    async def delete_edge(edge_id: str) -> JSONResponse:
        """Remove an edge's override; the edge gets its site's or the fleet policy under a new version."""
        version = await state.policy.clear_override("edge", edge_id)
        return JSONResponse({"version": version, "scope": "fleet", "scope_id": ""})

    @app.get("/edges")
    async def edges() -> list[dict[str, Any]]:
        """Every edge seen since start: sessions, Hello, last heartbeat."""
        return state.fleet.snapshot()

    return app
