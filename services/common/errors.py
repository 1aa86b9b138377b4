"""The one JSON error shape of every service: the ApiError routes raise, the handlers that
turn every failure into that shape (never a traceback), and its place in the OpenAPI
document."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from contracts.errors import InvalidInput

log = logging.getLogger(__name__)


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
