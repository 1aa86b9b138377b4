"""ASGI middleware every service puts around its routes: a body size limit, no NUL in a
query, and request metrics."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import error_response


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


class NoNulInQuery:
    """Refuse a query parameter holding a NUL character with 422, naming it: PostgreSQL
    text cannot hold one, so it would otherwise fail deep in a query as a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query: bytes = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if b"%00" in query or b"\x00" in query:
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if "\x00" in value or "\x00" in name:
                    response = error_response(
                        422, "invalid", "a query parameter may not hold a NUL character",
                        "\ufffd" if "\x00" in name else name[:100])
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


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
        response = ResponseStatus(send)
        try:
            await self.app(scope, receive, response.send)
        finally:
            route = scope.get("route")
            # Route templates, never raw paths: ids in paths would be unbounded labels.
            template = getattr(route, "path", None) or "unmatched"
            self.requests.labels(template, scope["method"],
                                 f"{response.status // 100}xx").inc()
            self.latency.labels(template).observe(time.perf_counter() - start)


class ResponseStatus:
    """The status of the response an app sends through `send`, seen as it passes; 500
    until one is sent (an app that raised sent none)."""

    def __init__(self, send: Send) -> None:
        self.status, self._send = 500, send

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
