"""One trace from an HTTP write to the webhook it causes: the registry's request span, the
relay's publish, the matcher's change, the notifier's routing and the webhook attempt,
each the parent of the next across NATS headers and database rows; the webhook's
`traceparent` names the attempt. With tracing off, no header carries a trace and the
path works as before; with an OTLP endpoint configured, spans are exported to it."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import jsonschema
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from contracts import asyncapi, matches
from contracts.events import REGISTRY_STREAM, DesignEvent
from contracts.matches import MATCHES_STREAM, MatchChange
from services.common import db, tracing
from services.matcher.settings import MatcherSettings
from services.notifier import store as notifier_store
from services.notifier.settings import NotifierSettings
from services.registry.store import Store
from tests.conftest import auth
from tests.support.builders import (
    design_doc,
    facility_doc,
    item_rows,
    match_piece,
    subscribe,
    webhook,
)
from tests.support.helpers import JSON, InProcess, InProcessMatcher, _stream, eventually
from tests.support.helpers import wait_ready as ready
from tests.support.receivers import Receiver

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
CALLER = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "caller=1"}




async def _write_design_and_receive(
        client: httpx.AsyncClient, key: str, matcher: InProcess, notifier: InProcess,
        receiver: tuple[Receiver, str], headers: dict[str, str]) -> Receiver:
    """A lab, a webhook subscription for it, then the design it can make, written with
    `headers`: returns the receiver once the design's match webhook arrived."""
    app, base = receiver
    await ready(matcher.url)
    await ready(notifier.url)
    made = await client.post("/v1/facilities?id=lab-paris", headers=auth(key) | JSON,
                             content=facility_doc("Lab Paris", ["FDM"], materials=["PLA"]))
    assert made.status_code == 201, made.text
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as alerts:
        await subscribe(alerts, key, webhook(f"{base}/ok", facility_ids=["lab-paris"]))
    posted = await client.post("/v1/designs?id=cup", headers=auth(key) | JSON | headers,
                               content=design_doc("Cup", ["3DP"], "PLA"))
    assert posted.status_code == 201, posted.text

    async def arrived() -> bool:
        return any(b"cup" in r.body for r in app.at("/ok"))

    await eventually(arrived, timeout=20)
    return app


def _one(spans: list[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    [found] = [s for s in spans if s.name == name and s.kind is kind]
    return found


async def test_one_trace_from_the_write_to_the_webhook(
        exporter: InMemorySpanExporter, client: httpx.AsyncClient, org: tuple[str, str],
        matcher_settings: MatcherSettings, notifier: InProcess,
        receiver: tuple[Receiver, str]) -> None:
    async with InProcessMatcher(matcher_settings) as matcher:
        app = await _write_design_and_receive(client, org[1], matcher, notifier, receiver,
                                              CALLER)
    [webhook] = [r for r in app.at("/ok") if b"cup" in r.body]
    version, trace_id, span_id, flags = webhook.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01")

    # the attempt's span ends once the answer is read, a moment after the receiver has it
    await eventually(lambda: _ended(exporter, "webhook"))
    spans = [s for s in exporter.get_finished_spans()
             if s.context.trace_id == int(CALLER_TRACE, 16)]
    request = _one(spans, "POST /v1/designs", SpanKind.SERVER)
    publish = _one(spans, "publish", SpanKind.PRODUCER)
    match = _one(spans, "match", SpanKind.CONSUMER)
    route = _one(spans, "route", SpanKind.CONSUMER)
    attempt = _one(spans, "webhook", SpanKind.CLIENT)
    # each the child of the one before: the caller's span, then along the path
    chain = [request, publish, match, route, attempt]
    assert request.parent is not None and request.parent.span_id == int(CALLER_SPAN, 16)
    assert request.parent.is_remote
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, (
            f"{child.name} is not a child of {parent.name}")
    assert int(span_id, 16) == attempt.context.span_id
    assert str(request.context.trace_state) == str(publish.context.trace_state)
    assert request.context.trace_state.get("caller") == "1"
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 201
    # nothing of the request but its route: no key, no query, no body
    recorded = " ".join(f"{k}={v}" for s in spans for k, v in (s.attributes or {}).items())
    assert org[1] not in recorded and "?id=" not in recorded
    # the messages' trace headers are as the AsyncAPI documents describe them
    for stream, model in ((REGISTRY_STREAM, DesignEvent), (MATCHES_STREAM, MatchChange)):
        traced = [m for m in await _stream(matcher_settings.nats_url, stream)
                  if "traceparent" in (m.headers or {})]
        assert traced, stream
        for msg in traced:
            jsonschema.validate(dict(msg.headers or {}), asyncapi.HEADERS[model])
        # the design's messages are in the caller's trace (the lab's write began its own)
        [ours] = [m for m in traced if m.subject.endswith(".design.cup")]
        assert ours.headers is not None
        assert ours.headers["traceparent"].split("-")[1] == CALLER_TRACE


async def test_the_outbox_keeps_the_writes_context(
        exporter: InMemorySpanExporter, client: httpx.AsyncClient, org: tuple[str, str],
        store: Store) -> None:
    """The relay may publish in another process, long after: the row carries the trace."""
    written = await client.post("/v1/designs?id=kept", headers=auth(org[1]) | JSON | CALLER,
                                content=design_doc("Kept", ["3DP"]))
    assert written.status_code == 201, written.text
    kept = await store.pool.fetchval(
        "SELECT trace_context FROM outbox WHERE entity_id = 'kept'")
    traceparent, _, tracestate = kept.partition(" ")
    assert traceparent.startswith(f"00-{CALLER_TRACE}-") and tracestate == "caller=1"
    await eventually(lambda: _ended(exporter, "publish"))


async def test_a_batch_keeps_its_changes_contexts_first_items_first(
        notifier_settings: NotifierSettings) -> None:
    """A webhook batch gathers several changes' matches: the delivery keeps each change's
    context once, in the order of its items; an untraced pass keeps none."""
    s = notifier_settings
    await db.migrate(s.database_url, s.notifier_db_schema, "services.notifier")
    pool = await db.create_pool(s.database_url, s.notifier_db_schema, min_size=1, max_size=2)
    try:
        store = notifier_store.Store(pool, s.notifier_keys_schema)
        batching = notifier_store.Batching(max_items=10, max_wait_s=0.0, in_flight=1,
                                           email_linger_s=0.0, email_max_wait_s=0.0)
        for sub in ("traced", "untraced"):
            await pool.execute(
                "INSERT INTO subscriptions (id, owner, channel, url, filter,"
                " unsubscribe_token) VALUES ($1, 'o', 'webhook', 'https://example.org/h',"
                " '{}', $1)", sub)
        contexts = [f"00-{CALLER_TRACE}-{n:016x}-01" for n in (1, 2)]
        for n, design in enumerate(("d-one", "d-two", "d-three")):
            message = match_piece(design, ["lab-a", "lab-b"])
            rows = item_rows(["traced"], message[2]) + item_rows(["untraced"], message[2])
            await store.add_items([(message[0], message[1], matches.ENCODING)], rows,
                                  {message[0]: contexts[n % 2]})
        await store.assemble_webhooks(batching, 0, 30.0, traced=True)
        kept = await pool.fetch("SELECT subscription_id, trace_contexts FROM deliveries")
        assert {r["subscription_id"]: r["trace_contexts"] for r in kept} == {
            "traced": contexts, "untraced": contexts}
        await pool.execute("DELETE FROM deliveries")
        await pool.execute("UPDATE items SET delivery_id = NULL")
        await store.assemble_webhooks(batching, 0, 30.0)
        assert await pool.fetchval("SELECT count(*) FROM deliveries") == 2
        assert await pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE trace_contexts IS NOT NULL") == 0
    finally:
        await pool.close()


def test_a_batch_attempt_is_the_first_changes_child_linked_to_the_others(
        exporter: InMemorySpanExporter) -> None:
    kept = []
    for name in ("first change", "second change"):
        with tracing.span(name, tracing.from_headers(CALLER)) as opened:
            kept.append(tracing.to_text(opened))
    parent, links = tracing.parent_and_links(kept)
    with tracing.span("webhook", parent, links=links):
        pass
    first, second, attempt = exporter.get_finished_spans()
    assert attempt.parent is not None and attempt.parent.span_id == first.context.span_id
    assert [link.context.span_id for link in attempt.links] == [second.context.span_id]
    assert attempt.context.trace_state.get("caller") == "1"


async def test_without_a_provider_no_message_carries_a_trace(
        client: httpx.AsyncClient, org: tuple[str, str], store: Store,
        matcher_settings: MatcherSettings, notifier: InProcess,
        receiver: tuple[Receiver, str]) -> None:
    assert not tracing.enabled()
    async with InProcessMatcher(matcher_settings) as matcher:
        app = await _write_design_and_receive(client, org[1], matcher, notifier, receiver,
                                              CALLER)
    assert all("traceparent" not in r.headers for r in app.requests)
    for stream in (REGISTRY_STREAM, MATCHES_STREAM):
        messages = await _stream(matcher_settings.nats_url, stream)
        assert messages, stream
        for msg in messages:
            assert not {"traceparent", "tracestate"} & set(msg.headers or {}), stream
    assert await store.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE trace_context IS NOT NULL") == 0


async def test_configured_with_an_endpoint_spans_go_to_it(
        monkeypatch: pytest.MonkeyPatch, receiver: tuple[Receiver, str]) -> None:
    """No endpoint: configure leaves tracing off. An endpoint: spans are exported to it
    over OTLP/HTTP, in the background."""
    for name in (*tracing.ENDPOINT_VARIABLES, "OTEL_SERVICE_NAME"):
        # set, then deleted: the undo removes what configure() sets (a bare delenv of an
        # absent variable records nothing to undo)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    tracing.configure("makelocal-test")
    assert not tracing.enabled()

    app, base = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", base)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    tracing.configure("makelocal-test")
    provider = trace.get_tracer_provider()
    try:
        assert tracing.enabled()
        with tracing.span("exported") as opened:
            assert opened is not None and opened.is_recording()
        await eventually(lambda: _received(app, "/v1/traces"), timeout=10)
        [export] = app.at("/v1/traces")[:1]
        assert export.headers["content-type"] == "application/x-protobuf"
        assert b"exported" in export.body and b"makelocal-test" in export.body
    finally:
        tracing.use(None)
        # (the exporter's thread posts to the receiver this loop serves: not on the loop)
        await asyncio.to_thread(provider.shutdown)  # type: ignore[attr-defined]


async def _ended(exporter: InMemorySpanExporter, name: str) -> bool:
    """Whether a span `name` of the caller's trace has ended."""
    return any(s.name == name and s.context.trace_id == int(CALLER_TRACE, 16)
               for s in exporter.get_finished_spans())


async def _received(app: Receiver, path: str) -> bool:
    return bool(app.at(path))
