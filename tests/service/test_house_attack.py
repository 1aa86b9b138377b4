"""Attacks on issue 18's house changes, each against real components: a client's
tracestate riding with an event near NATS's max_payload (the relay must still publish it),
and `makelocal status` reading a service whose /metrics is not Prometheus text."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from contracts.events import EntityKind
from makelocal.status import status
from services.common import keys, shell, tracing
from services.registry.entities import prepare
from services.registry.settings import RegistrySettings
from services.registry.store import Store
from services.registry.writes import WriteMode
from tests.conftest import auth
from tests.support.builders import design_doc, design_toml
from tests.support.helpers import (
    JSON,
    InProcess,
    InProcessRegistry,
    eventually,
    registry_rows,
    stream_messages,
)

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# The largest tracestate OpenTelemetry's propagator takes from a client (8192 characters,
# 32 members): what a write's server span, and so its outbox row, can carry.
LARGEST_STATE = ",".join(f"k{i:02d}={'v' * 250}" for i in range(32))




async def test_a_clients_largest_tracestate_does_not_stop_the_relay(
        settings: RegistrySettings, store: Store, exporter: InMemorySpanExporter) -> None:
    """An event that fits the write check (max_payload less the header room) plus the
    trace headers the relay adds: the server would refuse the whole message, closing the
    relay's connection on every retry, and the outbox would stall behind it."""
    _, key = await store.create_organization("Trace Lab")
    entity_id = f"near-{uuid.uuid4().hex[:8]}"
    # Each part name character adds 2000 bytes (2000 parts): 430 leaves the event a few
    # KiB under the write limit, less than the trace headers take.
    prepared = prepare(EntityKind.design, design_toml("Near", 2000, 430), "application/toml",
                       entity_id)
    parsed = keys.parse(key)
    assert parsed is not None
    await store.write(EntityKind.design, entity_id, prepared, mode=WriteMode.create,
                      key=parsed, expected_version=None,
                      trace_context=f"{CALLER} {LARGEST_STATE}")
    after = f"after-{entity_id}"
    await store.write(EntityKind.design, after,
                      prepare(EntityKind.design, design_toml("After"), "application/toml",
                              after),
                      mode=WriteMode.create, key=parsed, expected_version=None)

    async with InProcessRegistry(settings):
        async def published() -> dict[str, dict]:
            found = {m["entity_id"]: m for m in await stream_messages(settings.nats_url)
                     if m["entity_id"] in (entity_id, after)}
            return found if len(found) == 2 else {}

        found = await eventually(published, timeout=15)
    assert found[entity_id]["version"] == 1


HOSTILE_TRACE_HEADERS: list[dict[str, bytes]] = [
    {"traceparent": CALLER.encode(), "tracestate": b"k=" + b"v" * 60_000},
    {"traceparent": CALLER.encode(), "tracestate": b"a=b," * 5000},
    {"traceparent": CALLER.encode(), "tracestate": LARGEST_STATE.encode()},
    {"traceparent": CALLER.encode(), "tracestate": "caf\u00e9=\u00ff\u00fe".encode("latin-1")},
    {"traceparent": b"00-\xff\xfe" + b"0" * 29 + b"-b7ad6b7169203331-01"},
    {"traceparent": b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01"},
    {"traceparent": b"ff-" + CALLER[3:].encode()},
    {"traceparent": CALLER.encode() + b"-extra" * 2000},
]


@pytest.mark.parametrize("headers", HOSTILE_TRACE_HEADERS,
                         ids=["60k-state", "5000-members", "largest-state", "latin-1",
                              "non-hex", "zero-ids", "version-ff", "long-parent"])
async def test_hostile_trace_headers_on_a_write_neither_fail_it_nor_travel_whole(
        settings: RegistrySettings, client: httpx.AsyncClient, org: tuple[str, str],
        exporter: InMemorySpanExporter, headers: dict[str, bytes]) -> None:
    """The write is answered as without them, never 500; what the outbox keeps of the
    caller's context (and the relay puts in a NATS header) stays small."""
    entity_id = f"trace-{uuid.uuid4().hex[:8]}"
    answer = await client.post(f"/v1/designs?id={entity_id}",
                               headers={**auth(org[1]), **JSON, **headers},
                               content=design_doc("Traced"))
    assert answer.status_code in (201, 431), answer.text
    if answer.status_code == 431:  # uvicorn refused the headers whole: fine, not a 500
        return
    rows = await registry_rows(settings, "SELECT trace_context FROM outbox"
                                         f" WHERE entity_id = '{entity_id}'")
    assert len(rows) == 1
    kept = rows[0]["trace_context"]
    assert kept is not None and len(kept) <= 55 + 1 + tracing.STATE_MAX_CHARS
    assert "\r" not in kept and "\n" not in kept


class _HostileService(BaseHTTPRequestHandler):
    """Ready, but its /metrics is not the Prometheus text format."""

    def do_GET(self) -> None:
        body = b"ok" if self.path == "/readyz" else b"makelocal_registry_outbox_backlog {{{\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def hostile_service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_status_reads_past_a_service_whose_metrics_are_not_prometheus(
        hostile_service: str) -> None:
    """`makelocal status` must draw every service's row, not end in a traceback, when one
    answers /metrics with text the parser refuses."""
    found = status({"registry": hostile_service})
    assert [s.service for s in found] == ["registry"]
    assert found[0].metrics == {}
    assert "metrics" in found[0].health


async def test_a_chunked_body_over_the_limit_is_a_413_in_the_answer_and_the_metrics(
        settings: RegistrySettings, client: httpx.AsyncClient, org: tuple[str, str]) -> None:
    """No Content-Length: BodyLimit counts as the route reads and stops it mid-read. The
    answer is the JSON 413, and /metrics must not count a server error for it (alerts
    page on the 5xx rate)."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    before = await _server_errors(client)
    answer = await client.post("/v1/designs?id=chunked", headers={**auth(org[1]), **JSON},
                               content=chunks())
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "too_large"
    assert await _server_errors(client) == before


async def _server_errors(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "makelocal_registry_http_requests_total"
               and s.labels.get("status_class") == "5xx")


async def test_an_otlp_endpoint_that_never_answers_slows_no_request_nor_the_exit(
        start_registry: Any, org: tuple[str, str]) -> None:
    """Tracing on, the collector accepting connections but never answering: requests
    are answered as fast as without it, and SIGTERM still ends the process in time
    (a pod's grace period), not after the exporter's retries."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    blackhole = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = blackhole.sockets[0].getsockname()[1]
    try:
        service = await start_registry({
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "50"})
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
            slowest = 0.0
            for i in range(20):
                began = time.monotonic()
                answer = await http.post(f"/v1/designs?id=otlp-{uuid.uuid4().hex[:6]}-{i}",
                                         headers={**auth(org[1]), **JSON},
                                         content=design_doc(f"Otlp {i}"))
                slowest = max(slowest, time.monotonic() - began)
                assert answer.status_code == 201, answer.text
        await eventually(lambda: _true(held), timeout=10)  # the exporter did try
        assert slowest < 2.0
        began = time.monotonic()
        assert service.proc is not None
        service.proc.send_signal(signal.SIGTERM)
        await service.wait_dead(timeout=60)
        assert time.monotonic() - began < 10.0
    finally:
        for writer in held:
            writer.close()
        blackhole.close()


async def _true(items: list[Any]) -> bool:
    return bool(items)


async def test_a_background_task_that_dies_says_so_on_readyz_and_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    """A shell.Once (the notifier's dispatcher, the registry's relay) whose work raises
    ends for good: the process must not go on answering ready, with no word in the log,
    while nothing is delivered or published. One that ends as planned changes nothing."""

    async def learned() -> None:
        return

    async def dispatch() -> None:
        raise RuntimeError("a bug in the loop")

    app = shell.build(shell.Service(name="attack", metrics=CollectorRegistry(), checks={},
                                    max_body_bytes=1024,
                                    tasks=[shell.Once(learned, wait_s=1),
                                           shell.Once(dispatch, wait_s=1)]))
    async with InProcess(app, None) as running, httpx.AsyncClient(base_url=running.url) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"] == {"dispatch": "unavailable: TaskEnded"}
    assert any(r.levelname == "ERROR" and "dispatch" in r.getMessage() and r.exc_info
               and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)


ODD_REQUESTS = [
    ("DELETE", "/v1/designs", None),
    ("OPTIONS", "/v1/designs", None),
    ("GET", "/v1/designs/%00", None),
    ("GET", "/v1/designs?after=%ff%fe", None),
    ("POST", "/v1/validate", b"[" * 100_000),
    ("POST", "/v1/validate", b"1e999999"),
    # PostgreSQL text holds no NUL: refused before any query (was a 500)
    ("GET", "/v1/designs?q=%00", None),
    ("GET", "/v1/facilities?owner=a%00b", None),
    ("GET", "/v1/designs?id=x&id=%00", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ODD_REQUESTS)
async def test_odd_requests_get_the_json_error_shape_never_a_500(
        client: httpx.AsyncClient, org: tuple[str, str], method: str, path: str,
        body: bytes | None) -> None:
    answer = await client.request(method, path, content=body,
                                  headers={**auth(org[1]), **JSON})
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        assert answer.headers["content-type"].startswith("application/json")
        assert set(answer.json()["error"]) >= {"code", "message", "field"}


@pytest.mark.parametrize(("path", "field"), [("/v1/designs?q=%00", "q"),
                                             ("/v1/facilities?owner=a%00b&limit=5", "owner"),
                                             ("/v1/designs?id=x&id=%00", "id")])
async def test_a_nul_in_a_query_parameter_is_a_422_naming_it(
        client: httpx.AsyncClient, path: str, field: str) -> None:
    answer = await client.get(path)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
