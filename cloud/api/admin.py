"""The admin role's routes (/api/admin): who may use the admin API, and the API tokens an admin issues.

Only an admin reaches them (`cloud.api.auth.required_role`). An issued token is random (32 bytes),
shown once in the answer that issues it, and kept as its SHA-256 in the store, so every replica on
one database accepts it; revoking it (DELETE) ends it and the browser sessions signed in with it.
The configured users (admin.users, token files) are listed but managed where they are written: in
the config and its Secret. The policy signing keys are not served here: the private key never leaves
its file, and the public key's id is in every signed policy and in GET /policies.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field

from cloud.api.auth import TokenNameError, UserDirectory
from cloud.config import ADMIN_USER_NAME, AdminRole
from cloud.store import StoreError


class TokenRequest(BaseModel):
    """The token to issue: who it is for and what they may do."""

    name: str = Field(..., pattern=ADMIN_USER_NAME, description="The user's name, shown in the policy history.")
    role: AdminRole = Field(..., description="viewer, operator or admin (cloud/api/auth.py).")


def _who(request: Request) -> str:
    return str(getattr(request.state, "admin_user", None) or "anonymous")


def add_admin_routes(app: FastAPI, users: UserDirectory) -> None:
    """GET /api/admin/users, POST /api/admin/tokens, DELETE /api/admin/tokens/{name}."""
    router = APIRouter(prefix="/api/admin", tags=["admin"])

    @router.get("/users")
    async def list_users() -> dict[str, Any]:
        """Every user: the configured ones (`source: config`) and the issued tokens (`source: issued`), no secrets."""
        try:
            return {"users": await users.describe()}
        except StoreError as err:
            raise HTTPException(503, f"the issued tokens cannot be read: {err}") from err

    @router.post("/tokens", status_code=201)
    async def issue_token(body: TokenRequest, request: Request) -> dict[str, Any]:
        """Issue a token for a new user; the answer holds the token, which is never shown again."""
        try:
            token = await users.issue(body.name, body.role, _who(request))
        except TokenNameError as err:
            raise HTTPException(409, str(err)) from err
        except StoreError as err:
            raise HTTPException(503, f"the token could not be kept: {err}") from err
        return {
            "name": body.name,
            "role": body.role,
            "token": token,
            "note": "shown once: keep it now (only its SHA-256 is stored); revoke with DELETE /api/admin/tokens/NAME",
        }

    @router.delete("/tokens/{name}", status_code=204)
    async def revoke_token(name: str, request: Request) -> Response:
        """Revoke an issued token: it, and every session signed in with it, stops working."""
        try:
            gone = await users.revoke(name, _who(request))
        except TokenNameError as err:
            raise HTTPException(409, str(err)) from err
        except StoreError as err:
            raise HTTPException(503, f"the token could not be revoked: {err}") from err
        if not gone:
            raise HTTPException(404, f"no issued token is named {name}")
        return Response(status_code=204)

    app.include_router(router)
