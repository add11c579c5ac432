"""The admin HTTP API (FastAPI): health, Prometheus metrics, policies, fleet status, verdicts, dashboard.

JSON in and out, for people and their tools; the edges never use it (they speak protobuf over gRPC).
Policy bodies may be YAML or JSON (a JSON document is YAML too). The data routes live under /api
(OpenAPI at /openapi.json, Swagger UI at /docs); the dashboard is at /. Who may use it, and the
Host names it answers to: cloud/api/auth.py.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud.api.admin import add_admin_routes
from cloud.api.auth import AdminIdentity, HostCheck, SecurityHeaders, TokenAuth, UserDirectory, WriteRateLimit
from cloud.api.models import add_model_routes
from cloud.api.policies import add_policy_routes
from cloud.api.routes import api_router
from cloud.api.state import AdminState
from cloud.api.web import add_login_routes, add_web_routes

__all__ = ["AdminState", "create_app"]


def create_app(
    state: AdminState,
    users: list[AdminIdentity] | None = None,
    allowed_hosts: list[str] | None = None,
    write_rate: tuple[float, int] | None = None,
) -> FastAPI:
    """The admin app over one service's state; `users` (the configured ones; none: open, and no token can be
    issued), `allowed_hosts` (none: any) and `write_rate` ((per second, burst) of changes per user; none: no
    limit) guard it."""
    directory = UserDirectory(users or [], state.store)
    app = FastAPI(title="EdgeGLM cloud admin", version="2", docs_url=None, redoc_url=None)
    if write_rate is not None:
        app.add_middleware(
            WriteRateLimit, per_s=write_rate[0], burst=write_rate[1], refused=state.metrics.admin_refused
        )  # after TokenAuth names who
    app.add_middleware(SecurityHeaders)
    if directory.guarded:
        app.add_middleware(TokenAuth, users=directory, refused=state.metrics.admin_refused)
    if allowed_hosts:
        app.add_middleware(HostCheck, allowed_hosts=allowed_hosts)  # added last: runs first

    @app.get("/healthz", tags=["service"])
    async def healthz() -> JSONResponse:
        """200 while the service is SERVING, 503 otherwise."""
        status = state.health.status()
        code = 200 if status == "SERVING" else 503
        return JSONResponse(status_code=code, content={"status": status, "policy_version": state.policy.version})

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/edges", tags=["fleet"])
    async def edges() -> list[dict[str, Any]]:
        """Every edge seen since start: sessions, Hello, last heartbeat (GET /api/edges adds stored ones)."""
        return state.fleet.snapshot()

    add_policy_routes(app, state)
    add_model_routes(app, state)
    app.include_router(api_router(state))
    add_admin_routes(app, directory)
    add_login_routes(app, directory, state.metrics.admin_refused)
    add_web_routes(app)
    return app
