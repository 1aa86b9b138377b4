"""HTTP pieces every service's FastAPI app uses: one JSON error shape, a body size limit,
request metrics, the /metrics, /healthz and /readyz routes and the /docs pages."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.errors import InvalidInput
from services.common import keys
from services.common.ratelimit import TokenBuckets, retry_after

log = logging.getLogger(__name__)
CHALLENGE = {"WWW-Authenticate": "Bearer"}
# Swagger UI 5 (it reads OpenAPI 3.1) and ReDoc, as the fastapi-offline package ships them
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"


class ApiError(Exception):
    """An error the client caused, or must know of, with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None, *, limit: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers, self.limit = headers, limit


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None
    limit: int | None = Field(None, description="the limit reached, when an organization's"
                                                " limit refused the request")


class FieldError(BaseModel):
    code: str
    message: str
    field: str | None


class ErrorBody(BaseModel):
    """The one shape of every error response of every service."""

    error: ErrorDetail
    errors: list[FieldError] | None = Field(
        None, description="when the request is invalid in more than one place: every"
                          " place (the first is also `error`)")


_ERROR_STATUSES = {
    400: "the body could not be parsed (not JSON, or not UTF-8)",
    401: "no API key, or one that is malformed, revoked or unknown",
    404: "no such resource, or not this organization's",
    409: "conflicts with the resource's current state",
    412: "If-Match does not name the current version",
    413: "request body too large, or reading the document needs more memory than allowed",
    415: "unsupported media type",
    422: "invalid input; `field` names the offending field (`too_complex`: reading the"
         " document took longer than allowed)",
    429: "too many writes with this key, or failed API keys from this address, retry after"
         " Retry-After seconds; or an organization's limit reached (`limit`)",
    503: "busy (every document reader is), retry after Retry-After seconds",
}
# Always JSON, also on the routes that answer HTML pages: so the content is spelled out
# here rather than given as a model (FastAPI would file a model under the route's own
# media type); document_errors puts the schema it names into the document.
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": _ERROR_CONTENT}
    for status, description in _ERROR_STATUSES.items()}
"""For APIRouter(responses=...): the error responses documented on every operation, so
that clients (and the fuzzing tests) know their shape."""


def document_errors(app: FastAPI) -> None:
    """Add ErrorBody (and what it refers to) to the app's OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(body.pop("$defs", {}))
            schemas["ErrorBody"] = body
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, *,
                   limit: int | None = None,
                   position: dict[str, Any] | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message, "field": field}
    if limit is not None:
        error["limit"] = limit
    if position:
        error |= position
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def closing(exc: ApiError) -> ApiError:
    """The refusal of a request whose body was not read: the connection closes after it
    (kept alive, it would hold a socket for a body that may never come)."""
    exc.headers = (exc.headers or {}) | {"Connection": "close"}
    return exc


def install_error_handlers(app: FastAPI) -> None:
    document_errors(app)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers,
                              limit=exc.limit)

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        status = 415 if exc.code == "unsupported_media_type" else 422
        located = exc.as_dict()
        return error_response(status, exc.code, exc.message, exc.field,
                              position={k: located[k] for k in ("line", "column", "text")
                                        if k in located})

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        found: list[dict[str, Any]] = []
        for error in exc.errors() or [{}]:
            loc = list(error.get("loc", ()))
            where = field_path(loc[1:], exc.body) if loc[:1] == ["body"] else [
                str(p) for p in loc if p not in ("query", "path", "header")]
            item = {"code": "invalid", "message": str(error.get("msg", "invalid request")),
                    "field": ".".join(where) or None}
            if item not in found:  # (a union's members may say the same of one field)
                found.append(item)
        body: dict[str, Any] = {"error": found[0]}
        if len(found) > 1:
            body["errors"] = found
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, field = {400: ("malformed_body", "body"), 404: ("not_found", None),
                       405: ("method_not_allowed", None)}.get(exc.status_code,
                                                              ("http_error", None))
        return error_response(exc.status_code, code, str(exc.detail), field,
                              getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> Response:
        # The client hung up mid-body: nobody to answer, nothing of ours failed (nginx's
        # 499 in the access metrics, no traceback in the log).
        log.debug("client gone before its body arrived")
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if _database_away(exc):
            # PostgreSQL restarting or unreachable: nothing was written; try again
            log.warning("database unavailable", extra={"error": type(exc).__name__})
            return error_response(503, "unavailable", "the database is not reachable just"
                                  " now; nothing was written, try again", None,
                                  {"Retry-After": "1"})
        # The traceback goes to our log, never to the client.
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal", "internal error; it has been logged")


def _database_away(exc: BaseException) -> bool:
    """A failure to reach PostgreSQL (refused, reset, a connection the pool lost mid-use,
    the server starting or shutting down), as opposed to a fault of ours."""
    return isinstance(exc, OSError | asyncpg.exceptions.InterfaceError
                      | asyncpg.exceptions.InternalClientError
                      | asyncpg.exceptions.PostgresConnectionError
                      | asyncpg.exceptions.CannotConnectNowError
                      | asyncpg.exceptions.AdminShutdownError
                      | asyncpg.exceptions.ConnectionDoesNotExistError)


def field_path(loc: list[Any], body: Any) -> list[str]:
    """A body error's location as the client wrote the document. Pydantic puts a tagged
    union's tag (the value of its discriminator, "webhook") and validator labels
    ("function-after[...]") among the field names: those are left out."""
    path: list[str] = []
    node = body
    for step in loc:
        if isinstance(node, dict) and step not in node and (
                step in node.values() or "[" in str(step)):
            continue  # the tag of a tagged union, or a validator's label
        if isinstance(node, dict):
            node = node.get(step)
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        elif "[" in str(step):
            continue  # a validator's label below a value
        else:
            node = None
        path.append(str(step))
    return path


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413 before they are read whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "too_large",
                                  f"request body over {self.limit} bytes", "body")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class HttpMetrics:
    """Requests by route template and status class, and their latency."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry, prefix: str) -> None:
        self.app = app
        self.requests = Counter(f"{prefix}_http_requests_total", "HTTP requests served",
                                ["route", "method", "status_class"], registry=registry)
        self.latency = Histogram(f"{prefix}_http_request_duration_seconds",
                                 "HTTP request latency", ["route"], registry=registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                          2.5, 5, 10))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = scope.get("route")
            # Route templates, never raw paths: ids in paths would be unbounded labels.
            template = getattr(route, "path", None) or "unmatched"
            self.requests.labels(template, scope["method"], f"{status[0] // 100}xx").inc()
            self.latency.labels(template).observe(time.perf_counter() - start)


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


def parse_near(near: str | None, radius_km: float | None) -> tuple[float, float, float] | None:
    """`near=lat,lon` with `radius_km`, as every API that filters by distance takes them."""
    if near is None and radius_km is None:
        return None
    if near is None or radius_km is None:
        raise ApiError(422, "invalid", "near=lat,lon and radius_km go together",
                       "near" if near is None else "radius_km")
    try:
        lat_s, lon_s = near.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        raise ApiError(422, "invalid", "near must be 'lat,lon'", "near") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ApiError(422, "range", "latitude must be in [-90, 90], longitude in [-180, 180]",
                       "near")
    return lat, lon, radius_km


class WriteLimit:
    """The per-key write limit of one service process (services.common.ratelimit); checked
    for verified keys only, so that a made-up key id never gets a bucket."""

    def __init__(self, rate: float, burst: int) -> None:
        self.buckets = TokenBuckets(rate, burst)

    def check(self, key_id: str) -> None:
        wait = self.buckets.take(key_id, time.monotonic())
        if wait > 0:
            raise ApiError(429, "rate_limited", "too many writes with this API key; retry "
                           "after the time in Retry-After", "Authorization",
                           {"Retry-After": retry_after(wait)})


def required_key(request: Request) -> tuple[str, str]:
    """A well-formed API key (key id, secret), or 401 before the body is read; not yet
    verified: services.common.auth checks it against its hash."""
    auth, other = request.headers.get("authorization"), request.headers.get("x-api-key")
    if not auth and not other:
        raise ApiError(401, "unauthorized", "an API key is required", "Authorization",
                       CHALLENGE)
    parsed = keys.from_headers(auth, other)
    if parsed is None:
        raise ApiError(401, "unauthorized", "the API key is not valid", "Authorization",
                       CHALLENGE)
    return parsed
