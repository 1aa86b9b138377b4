"""OpenTelemetry, in this one module: one trace from an HTTP write to the webhook it causes.

The W3C trace context (`traceparent`, `tracestate`) travels in HTTP headers, in NATS
headers, and as text in a database column where work waits for another process (the
registry's outbox, the notifier's match messages and deliveries).

Off unless configured: `configure` installs an SDK tracer provider exporting over OTLP/HTTP
only when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (the
exporter reads the other standard OTEL_EXPORTER_OTLP_* variables, the SDK OTEL_TRACES_SAMPLER
and OTEL_RESOURCE_ATTRIBUTES). Until then every helper here returns at its first line: no
span, no context object, no header, so the hot paths pay one function call. Nothing here
records a URL, a query, a header or a body: ids and routes only, never a secret."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.middleware import ResponseStatus

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SERVER, CLIENT, PRODUCER, CONSUMER = (SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER,
                                      SpanKind.CONSUMER)
_W3C = TraceContextTextMapPropagator()
# What W3C Trace Context asks every vendor to propagate at least; all we pass on. It keeps
# the trace headers (with Nats-Msg-Id) inside writes.EVENT_HEADROOM_BYTES.
STATE_MAX_CHARS = 512
_tracer: Tracer | None = None  # None: tracing is off

__all__ = ["CLIENT", "CONSUMER", "PRODUCER", "SERVER", "STATE_MAX_CHARS", "Context", "Span",
           "configure", "current_text", "enabled", "end", "from_headers", "from_text",
           "headers_of", "instrument", "parent_and_links", "span", "start", "to_text", "use"]


def enabled() -> bool:
    return _tracer is not None


def use(provider: TracerProvider | None) -> None:
    """Trace with `provider` from now on (None: stop tracing). `configure` calls it;
    tests give an SDK provider with an in-memory exporter, and None after."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("makelocal")


def configure(service_name: str) -> None:
    """An SDK provider exporting to the configured OTLP/HTTP endpoint, in batches off the
    request path; nothing when no endpoint is configured or tracing is on already."""
    if _tracer is not None or not any(os.environ.get(v) for v in ENDPOINT_VARIABLES):
        return
    # Imported here: a process that does not trace never loads the SDK and exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Worker processes uvicorn spawns build the app anew and configure from this (instrument)
    # The operator's OTEL_SERVICE_NAME wins over our default name.
    name = os.environ.setdefault("OTEL_SERVICE_NAME", service_name)
    provider = SdkTracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    use(provider)


# contexts in and out


def from_headers(headers: Mapping[str, str] | None) -> Context | None:
    """The context a message's or request's `traceparent` names; None when off or absent."""
    if _tracer is None or not headers or "traceparent" not in headers:
        return None
    return _W3C.extract(headers)


def from_text(text: str | None) -> Context | None:
    """The context `to_text` stored; None when off or none was stored."""
    if _tracer is None or not text:
        return None
    traceparent, _, tracestate = text.partition(" ")
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _W3C.extract(carrier)


def headers_of(span: Span | None) -> dict[str, str]:
    """`traceparent` (and `tracestate` when there is one) naming `span` as the parent of
    what the receiver does; empty when off or the span is not recorded."""
    if span is None or not span.is_recording():
        return {}
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, trace.set_span_in_context(span))
    if "tracestate" in carrier:
        state = _bounded(carrier["tracestate"])
        if state:
            carrier["tracestate"] = state
        else:
            del carrier["tracestate"]
    return carrier


def _bounded(state: str) -> str:
    """`state` cut to STATE_MAX_CHARS as W3C Trace Context truncates: members over 128
    characters go first, then members from the end. A client's tracestate (up to 8 KiB)
    is copied into every header and row downstream; unbounded, it would push a REGISTRY
    event near max_payload over the limit, and NATS would refuse it on every retry."""
    if len(state) <= STATE_MAX_CHARS:
        return state
    members = [m for m in state.split(",") if len(m) <= 128]
    while members and len(",".join(members)) > STATE_MAX_CHARS:
        members.pop()
    return ",".join(members)


def to_text(span: Span | None) -> str | None:
    """`span`'s context as one line to keep in a text column (traceparent, then a space and
    the tracestate when there is one: a traceparent holds no space); None when off or
    `span` is not recorded."""
    carrier = headers_of(span)
    if not carrier:
        return None
    state = carrier.get("tracestate")
    return f"{carrier['traceparent']} {state}" if state else carrier["traceparent"]


def current_text() -> str | None:
    """`to_text` of the span the running task is in (an HTTP request's server span)."""
    if _tracer is None:
        return None
    return to_text(trace.get_current_span())


def parent_and_links(texts: Sequence[str] | None) -> tuple[Context | None, list[Link]]:
    """Work done for several changes at once (a webhook batch): the first change's context
    is the parent, the others are links."""
    if _tracer is None or not texts:
        return None, []
    contexts = [from_text(t) for t in texts]
    linked = [trace.get_current_span(c).get_span_context() for c in contexts[1:] if c]
    return contexts[0], [Link(c) for c in linked if c.is_valid]


# spans


def start(name: str, parent: Context | None, kind: SpanKind = SpanKind.INTERNAL,
          attributes: Mapping[str, Any] | None = None,
          links: Sequence[Link] = ()) -> Span | None:
    """A span the caller ends with `end` (its work spans awaits that are not one block);
    None when off. A None parent starts a trace."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, context=parent, kind=kind, attributes=attributes,
                              links=links)


def end(span: Span | None, error: BaseException | None = None) -> None:
    if span is None:
        return
    if error is not None:
        _failed(span, error)
    span.end()


def _failed(span: Span, error: BaseException) -> None:
    # The error's type only: its text may hold a URL with a token, or a secret.
    span.set_status(trace.StatusCode.ERROR, type(error).__name__)
    span.set_attribute("error.type", type(error).__name__)


@contextlib.contextmanager
def span(name: str, parent: Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
         attributes: Mapping[str, Any] | None = None,
         links: Sequence[Link] = ()) -> Iterator[Span | None]:
    """A span around a block, current within it, ended (with the error, if one) after;
    yields None when off."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(name, context=parent, kind=kind,
                                       attributes=attributes, links=links,
                                       record_exception=False,
                                       set_status_on_exception=False) as opened:
        try:
            yield opened
        except BaseException as exc:
            _failed(opened, exc)
            raise


# HTTP server spans


def instrument(app: Any) -> None:
    """Every HTTP request to `app` in a server span, continuing the caller's traceparent.
    Also configures tracing where only the app is built (uvicorn's worker processes)."""
    if _tracer is None and os.environ.get("OTEL_SERVICE_NAME"):
        configure(os.environ["OTEL_SERVICE_NAME"])
    app.add_middleware(ServerSpans)


class ServerSpans:
    """ASGI middleware: a server span per HTTP request, named by method and route template
    (never the raw path or query: they may hold ids or tokens)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = _tracer
        if tracer is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"traceparent", b"tracestate")}
        method = scope["method"]
        status = ResponseStatus(send)
        with tracer.start_as_current_span(method, context=from_headers(headers), kind=SERVER,
                                          attributes={"http.request.method": method},
                                          record_exception=False,
                                          set_status_on_exception=False) as opened:
            try:
                await self.app(scope, receive, status.send)
            finally:
                template = getattr(scope.get("route"), "path", None)
                if template:
                    opened.update_name(f"{method} {template}")
                    opened.set_attribute("http.route", template)
                opened.set_attribute("http.response.status_code", status.status)
                if status.status >= 500:
                    opened.set_status(trace.StatusCode.ERROR)
