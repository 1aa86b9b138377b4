"""The operational routes every service answers: /metrics, /healthz, /readyz and
/asyncapi."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], Awaitable[None]]


def install_operational_routes(app: FastAPI, registry: CollectorRegistry,
                               checks: dict[str, Check],
                               asyncapi: dict[str, Any] | None = None) -> None:
    """/metrics, /healthz (the process answers), /readyz (its dependencies answer) and
    /asyncapi (the events it publishes and consumes)."""

    if asyncapi is not None:
        @app.get("/asyncapi", include_in_schema=False)
        async def asyncapi_document() -> JSONResponse:
            return JSONResponse(asyncapi)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        results = {}
        for name, check in checks.items():
            try:
                await check()
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in results.values())
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)
