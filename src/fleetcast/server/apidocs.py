"""``/api/docs``: the interactive API page, served entirely by the server (issue 12 item 13).

FastAPI's default page loads Swagger UI's JavaScript and CSS from a public CDN, which a lab server
without internet cannot reach (and which would run someone else's code next to the admin token).
The files come from the ``fastapi-offline`` package instead (Swagger UI 5, which reads OpenAPI
3.1), served under ``/api/docs/static/``; the page itself is FastAPI's, pointed at them.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, PlainTextResponse, Response

logger = logging.getLogger(__name__)

DOCS = "/api/docs"
STATIC = "/api/docs/static"


def static_dir() -> Path | None:
    """Where the Swagger UI files are, or None when the package is missing."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def install(app: FastAPI) -> None:
    folder = static_dir()
    if folder is not None:
        app.mount(STATIC, StaticFiles(directory=folder), name="api-docs-static")

    @app.get(DOCS, include_in_schema=False)
    async def docs() -> Response:
        """Swagger UI from this server's own files (no CDN)."""
        if folder is None:
            return PlainTextResponse(
                "the API page needs the fastapi-offline package (Swagger UI files); "
                "the API itself is described at /api/openapi.json",
                status_code=503,
            )
        page: HTMLResponse = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/api/openapi.json",
            title="fleetcast API",
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon.png",
        )
        return page
