"""/docs (Swagger UI) and /redoc, served with their assets from the app itself."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

# Swagger UI 5 (it reads OpenAPI 3.1) and ReDoc, as the fastapi-offline package ships them
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI, assets: str = "/docs/assets") -> None:
    """/docs (Swagger UI) and /redoc whose scripts, styles and icon the app serves itself
    under `assets`: they work with no internet. The app is made with docs_url=None and
    redoc_url=None (FastAPI's own pages load them from a CDN)."""
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(assets, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{assets}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets}/favicon.png",
            # no badge fetched from validator.swagger.io
            swagger_ui_parameters=(app.swagger_ui_parameters or {}) | {"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{assets}/favicon.png", with_google_fonts=False)
