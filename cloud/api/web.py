"""The dashboard (static files at /) and the API docs at /docs, both served without any CDN.

FastAPI's own /docs page loads Swagger UI from a CDN, which the cloud's private network may not
reach; here its files (Swagger UI 5, which reads FastAPI's OpenAPI 3.1) come from the static folder
of the `fastapi-offline` package (cloud extra) instead; only those files are used. Without that
package /docs says so and points at /openapi.json, which always works.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

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
