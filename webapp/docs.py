"""The API's documentation pages with their assets served by this app, not by a CDN.

FastAPI's default /docs page loads Swagger UI from a CDN (and ReDoc also Google Fonts), so on
a machine without internet, or a LAN demo, the page is blank. The fastapi-offline package
ships the Swagger UI and ReDoc bundles; we serve its files, so both pages work offline.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse

from .errors import ApiError

DOCS, REDOC = "/api/docs", "/api/redoc"
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
          "redoc.standalone.js": "text/javascript"}
NO_FAVICON = "data:,"  # the defaults fetch one from fastapi.tiangolo.com


def _assets_dir() -> str:
    import fastapi_offline

    return os.path.join(os.path.dirname(fastapi_offline.__file__), "static")


def install(app: FastAPI) -> None:
    """GET /api/docs (Swagger UI), /api/redoc (ReDoc) and their assets under /api/docs/."""
    folder = _assets_dir()

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                                   swagger_js_url=f"{DOCS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS}/swagger-ui.css", swagger_favicon_url=NO_FAVICON)

    @app.get(REDOC, include_in_schema=False)
    async def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                              redoc_js_url=f"{DOCS}/redoc.standalone.js", redoc_favicon_url=NO_FAVICON,
                              with_google_fonts=False)

    @app.get(DOCS + "/{name}", include_in_schema=False)
    async def asset(name: str):
        if name not in ASSETS:  # only these files: no path from a client reaches the file system
            raise ApiError(404, "not_found", f"no documentation asset {name!r}")
        return FileResponse(os.path.join(folder, name), media_type=ASSETS[name],
                            headers={"Cache-Control": "public, max-age=86400"})
