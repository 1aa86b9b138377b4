"""Attacks on issue 18's pure parts: what the trace helpers pass on of a hostile caller's
context, what they cost with tracing off, and `makelocal status` drawing hostile values."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from contracts.matches import headroom
from makelocal.status import ServiceStatus, draw
from services.common import tracing
from services.notifier.delivery import Delivery
from services.notifier.messages import verify_body
from services.notifier.rows import Subscription
from services.registry.writes import EVENT_HEADROOM_BYTES

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"




def _passed_on(state: str) -> dict[str, str]:
    with tracing.span("x", tracing.from_headers({"traceparent": CALLER,
                                                 "tracestate": state})) as opened:
        return tracing.headers_of(opened)


def test_a_callers_largest_tracestate_is_cut_to_what_w3c_asks_us_to_pass_on(
        exporter: InMemorySpanExporter) -> None:
    """Cut, the trace headers and Nats-Msg-Id fit the room the registry (and the matcher)
    keep under max_payload for headers, as NATS counts them (HPUB's header block)."""
    small = ",".join(f"s{i:02d}={'v' * 100}" for i in range(32))  # 3.4 KB, all taken
    sent = _passed_on(small)
    assert 0 < len(sent["tracestate"]) <= tracing.STATE_MAX_CHARS
    largest = ",".join(f"k{i:02d}={'v' * 250}" for i in range(32))
    assert len(_passed_on(largest).get("tracestate", "")) <= tracing.STATE_MAX_CHARS
    worst = {"Nats-Msg-Id": str(uuid.uuid4()), "traceparent": CALLER,
             "tracestate": "a" * tracing.STATE_MAX_CHARS}
    block = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in worst.items()) + "\r\n"
    assert len(block) <= EVENT_HEADROOM_BYTES and len(block) <= headroom(0)


def test_cutting_a_tracestate_drops_long_members_first_then_from_the_end(
        exporter: InMemorySpanExporter) -> None:
    # 32 members (the most the propagator takes): without the long one, still over 512
    small = [f"s{i:02d}={'v' * 10}" for i in range(30)]
    state = ",".join([small[0], f"long={'v' * 130}", *small[1:], f"last={'v' * 100}"])
    kept = _passed_on(state)["tracestate"].split(",")
    assert kept == small


def test_a_short_tracestate_passes_unchanged(exporter: InMemorySpanExporter) -> None:
    assert _passed_on("a=1,b=2")["tracestate"] == "a=1,b=2"


@pytest.mark.parametrize("parent", [CALLER + "\r\nX-Evil: 1", "00-\u00ff" + CALLER[4:],
                                    "garbage", ""])
def test_no_hostile_traceparent_reaches_an_outgoing_header(exporter: InMemorySpanExporter,
                                                           parent: str) -> None:
    with tracing.span("x", tracing.from_headers({"traceparent": parent,
                                                 "tracestate": "a=b\r\nX-Evil: 1"})) as s:
        sent = tracing.headers_of(s)
    assert set(sent) <= {"traceparent", "tracestate"}
    assert all(v.isascii() and "\r" not in v and "\n" not in v for v in sent.values())


@pytest.mark.parametrize("stored", ["garbage", " ", "  a=b", CALLER + "  x",
                                    "\n".join([CALLER] * 3)])
def test_a_stored_context_that_is_not_ours_starts_a_trace_and_never_raises(
        exporter: InMemorySpanExporter, stored: str) -> None:
    parent, links = tracing.parent_and_links([stored, stored])
    with tracing.span("x", parent, links=links) as opened:
        assert opened is not None


def test_tracing_off_makes_and_carries_nothing() -> None:
    assert not tracing.enabled()
    assert tracing.from_headers({"traceparent": CALLER}) is None
    assert tracing.from_text(CALLER) is None
    assert tracing.current_text() is None
    assert tracing.parent_and_links([CALLER]) == (None, [])
    assert tracing.start("x", None) is None
    with tracing.span("x") as opened:
        assert opened is None
    assert tracing.headers_of(opened) == {} and tracing.to_text(opened) is None


HOSTILE = ServiceStatus("registry", "[link=http://evil][red]ready[/red]",
                        {"makelocal_registry_outbox_backlog": 1e308,
                         "makelocal_registry_outbox_oldest_age_seconds": float("nan"),
                         "makelocal_registry_outbox_parked_rows": float("inf")})


@pytest.mark.parametrize("width", [1, 2, 10, 200])
@pytest.mark.parametrize("terminal", [True, False])
def test_status_draws_hostile_values_at_any_width(width: int, terminal: bool) -> None:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=terminal, color_system=None)
    draw([HOSTILE], console)
    if not terminal:  # as wide as it needs: every cell whole, markup as written
        text = out.getvalue()
        assert "[link=http://evil][red]ready[/red]" in text
        assert "10000000000000000" in text and "nan" in text and "inf" in text


@pytest.mark.parametrize("width", [1, 10, 40])
def test_a_terminal_too_narrow_even_for_stacked_headings_still_shows_every_value(
        width: int) -> None:
    """Rich fits a table into any width by dropping columns and cutting cells: the name
    and every value must still be there, if folded over lines."""
    out = io.StringIO()
    found = [ServiceStatus("registry-1", "ready", {"makelocal_registry_outbox_backlog": 1234567,
                                                   "makelocal_registry_outbox_parked_rows": 42})]
    draw(found, Console(file=out, width=width, force_terminal=True, color_system=None))
    text = "".join(line.strip() for line in out.getvalue().splitlines())
    assert all(whole in text for whole in ("registry-1", "ready", "1234567", "42"))


VERIFY_TOKEN = "verify-token-that-must-not-leak"
URL_TOKEN = "receiver-token-in-the-url"


def test_a_delivery_or_subscription_repr_shows_no_token_of_its_body_or_url() -> None:
    """A verification's body holds its link's token (whoever has it verifies the address),
    and a receiver's URL may hold its token (dispatch logs an error's type, never its
    text, for this reason): a row in a log line or a traceback's locals must hold neither."""
    url = f"https://hooks.example/in?token={URL_TOKEN}"
    delivery = Delivery(
        id=uuid.uuid4(), kind="verify",
        body=verify_body(f"https://makelocal.example/v1/verify?token={VERIFY_TOKEN}"),
        attempts=1, item_count=0, oldest_change_at=None, trace_contexts=None,
        subscription_id="sub_0123456789abcdef", channel="webhook", url=url, address=None,
        contact_email=None, enabled=True, verified=False, unsubscribe_token=None,
        digest=None, secret=None, previous_secret=None, failing=False, owner="org_1")
    now = datetime(2026, 12, 1, tzinfo=UTC)
    subscription = Subscription(
        id="sub_0123456789abcdef", owner="org_1", channel="webhook", url=url, address=None,
        filter={}, digest="immediate", verified=True, enabled=True, disabled_reason=None,
        contact_email=None, failing_since=None, last_success_at=None, created_at=now,
        updated_at=now, previous_until=None, suppressed_until=None)
    for row in (delivery, subscription):
        for shown in (repr(row), str(row)):
            assert VERIFY_TOKEN not in shown and URL_TOKEN not in shown
    assert delivery.url == url and VERIFY_TOKEN.encode() in delivery.body
