"""The dashboard (static files at /) and the API docs at /docs, both served without any CDN.

FastAPI's own /docs page loads Swagger UI from a CDN, which the cloud's private network may not
reach; here its files (Swagger UI 5, which reads FastAPI's OpenAPI 3.1) come from the static folder
of the `fastapi-offline` package (cloud extra) instead; only those files are used. Without that
package /docs says so and points at /openapi.json, which always works.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter

from cloud.api.auth import SESSION_COOKIE, SESSION_S, UserDirectory, session_value, user_by_token

logger = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
_NO_SWAGGER = """<!doctype html><meta charset="utf-8"><title>EdgeGLM cloud admin API</title>
<p>Swagger UI's files are not installed (<code>pip install fastapi-offline</code>, part of the cloud extra).
The OpenAPI schema is at <a href="/openapi.json">/openapi.json</a>.</p>"""


def _swagger_assets() -> Path | None:
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


MAX_LOGIN_BODY = 4096  # a form with one token
_PROBLEM = '<p class="problem" role="alert">That token is not one of this service\'s users. Try again.</p>'


def _https(request: Request) -> bool:
    """Whether the browser reached us over HTTPS (directly, or through a proxy that says so)."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def add_login_routes(app: FastAPI, users: UserDirectory, refused: Counter) -> None:
    """/login (the page), /auth/login (its form: the token, for a session cookie) and /auth/logout."""
    page = (STATIC / "login.html").read_text()

    @app.get("/login", include_in_schema=False)
    async def login_page(failed: int = 0) -> Response:
        """The sign-in form; with no users the API is open and there is nothing to sign in to."""
        if not users.guarded:
            return RedirectResponse("/", status_code=303)
        return HTMLResponse(page.replace("<!--problem-->", _PROBLEM if failed else ""))

    @app.post("/auth/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Check the form's token; a session cookie and the dashboard, or the form again."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return HTMLResponse("the sign-in form is at most 4 KiB", status_code=413)
        token = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0].strip()
        user = user_by_token(await users.users(), token)
        if user is None:
            client = request.client.host if request.client else "?"
            logger.warning("admin: a sign-in with a wrong token from %s", client)
            refused.labels("wrong_sign_in").inc()
            return RedirectResponse("/login?failed=1", status_code=303)
        logger.info("admin: %s (%s) signed in", user.name, user.role)
        answer = RedirectResponse("/", status_code=303)
        answer.set_cookie(
            SESSION_COOKIE,
            session_value(user),
            max_age=SESSION_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=_https(request),
        )
        return answer

    @app.post("/auth/logout", include_in_schema=False)
    async def logout() -> Response:
        """Forget the session cookie and show the sign-in form."""
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return answer


def add_web_routes(app: FastAPI) -> None:
    """Serve the dashboard at / (files under /static) and Swagger UI at /docs from local files."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    assets = _swagger_assets()
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    else:
        logger.warning("fastapi-offline is not installed: /docs shows a link to /openapi.json only")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        """The dashboard."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Swagger UI over /openapi.json, from local files."""
        if assets is None:
            return HTMLResponse(_NO_SWAGGER)
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )
