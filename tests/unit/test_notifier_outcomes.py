"""What one attempt's result means (outcomes.py), for webhooks and emails alike, and what
a claimed delivery says about how it goes out (delivery.py). Pure, but for the webhook
answers that never come, which are made by real sockets on loopback."""

from __future__ import annotations

import asyncio
import random
import ssl
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiosmtplib
import pytest

from services.notifier.addresses import parse_networks
from services.notifier.delivery import Delivery
from services.notifier.guard import Guard
from services.notifier.metrics import OUTCOMES
from services.notifier.outcomes import GONE, Outcome, OutcomeKind, again, of_email, of_webhook
from services.notifier.refusals import explain
from services.notifier.schedule import DEFAULT_SCHEDULE, OUR_FAULT_MAX_DELAY_S
from services.notifier.transport import post
from services.notifier.webhook_client import WebhookClient

STEPS = (5.0, 10.0)
LAST = len(STEPS)  # the attempt after which the schedule is done


def test_the_outcomes_are_the_metric_labels_and_stored_statuses_they_were() -> None:
    assert tuple(OutcomeKind) == OUTCOMES == ("delivered", "retry", "failed", "cancelled")


# --- webhooks ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_a_2xx_delivers_however_many_attempts_came_before(status: int) -> None:
    for attempts in (1, LAST + 5):
        assert of_webhook(status, attempts, STEPS) == Outcome(OutcomeKind.DELIVERED)


@pytest.mark.parametrize("status", [0, 100, 301, 302, 304, 307, 308, 400, 401, 403, 404, 409,
                                    413, 422, 429, 500, 502, 503, 504])
def test_any_other_answer_is_retried_on_the_schedule_then_fails(status: int) -> None:
    """3xx is not followed; 4xx but 410 may be a receiver's passing mistake; 0 is no
    answer at all."""
    first = of_webhook(status, 1, STEPS, rng=random.Random(1))
    assert first.kind is OutcomeKind.RETRY and first.delay is not None
    assert 0.8 * STEPS[0] <= first.delay <= 1.2 * STEPS[0]
    assert not (first.ours or first.suppress or first.disable_reason)
    last = of_webhook(status, LAST, STEPS, rng=random.Random(1))
    assert last.kind is OutcomeKind.RETRY
    assert 0.8 * STEPS[-1] <= (last.delay or 0) <= 1.2 * STEPS[-1]
    assert of_webhook(status, LAST + 1, STEPS) == Outcome(OutcomeKind.FAILED)


@pytest.mark.parametrize("attempts", [1, LAST + 1])
def test_410_fails_at_once_and_disables_the_subscription(attempts: int) -> None:
    assert of_webhook(410, attempts, STEPS) == Outcome(OutcomeKind.FAILED, disable_reason=GONE)


def test_retry_after_of_a_429_or_503_is_honoured_within_its_bounds() -> None:
    assert of_webhook(429, 1, (5.0,), "7") == Outcome(OutcomeKind.RETRY, 7.0)
    assert of_webhook(503, 1, (5.0,), "1000").delay == 10  # at most twice the step
    assert of_webhook(429, 1, (5.0,), "1").delay == 5  # never sooner than the step
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=60))
    assert 5 < (of_webhook(503, 1, (5.0,), soon).delay or 0) <= 10  # an HTTP date
    assert of_webhook(429, 2, (5.0,), "1") == Outcome(OutcomeKind.FAILED)  # schedule done
    # another status's Retry-After is not read: the jittered step
    assert of_webhook(500, 1, (5.0,), "9", random.Random(1)).delay != 9


def _loopback() -> WebhookClient:
    async def resolve(host: str, port: int) -> list[str]:
        raise OSError("NXDOMAIN")

    return WebhookClient(Guard(parse_networks("127.0.0.0/8"), resolve))


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that takes the connection and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda *_: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def test_no_answer_timed_out_refused_or_not_allowed_is_retried(silent_port: int) -> None:
    client = _loopback()
    try:
        results = [
            await post(client, f"http://127.0.0.1:{silent_port}/hook", {}, b"{}", 0.3),
            await post(client, f"http://127.0.0.1:{await _closed_port()}/hook", {}, b"{}", 5),
            await post(client, "http://10.0.0.1/hook", {}, b"{}", 5),  # the guard refuses
        ]
    finally:
        await client.close()
    assert [r.status for r in results] == [0, 0, 0]
    assert results[0].error == "timed out after 0.3 s"
    assert (results[2].error or "").startswith("refused: ")
    for r in results:
        assert of_webhook(r.status, 1, STEPS, r.retry_after).kind is OutcomeKind.RETRY
        assert of_webhook(r.status, LAST + 1, STEPS, r.retry_after).kind is OutcomeKind.FAILED


# --- emails --------------------------------------------------------------------------------


def _refusal(kind: type[aiosmtplib.SMTPResponseException], code: int, text: str,
             ) -> aiosmtplib.SMTPResponseException:
    if kind is aiosmtplib.SMTPRecipientRefused or kind is aiosmtplib.SMTPSenderRefused:
        return kind(code, text, "someone@example.org")  # type: ignore[call-arg]
    return kind(code, text)


RCPT, DATA, MAIL = (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError,
                    aiosmtplib.SMTPSenderRefused)
GREETING, AUTH = aiosmtplib.SMTPConnectResponseError, aiosmtplib.SMTPAuthenticationError
RETRY, SUPPRESS, OURS = "retry", "suppress", "ours"


@pytest.mark.parametrize(("kind", "code", "text", "meaning"), [
    (GREETING, 421, "4.3.2 shutting down", RETRY),
    (RCPT, 421, "4.4.5 too busy", RETRY),
    (RCPT, 450, "4.2.0 mailbox busy", RETRY),
    (RCPT, 450, "4.7.1 greylisted, try later", RETRY),
    (RCPT, 451, "4.3.0 local error", RETRY),
    (DATA, 451, "4.3.0 try again", RETRY),
    (RCPT, 452, "4.2.2 mailbox full", RETRY),
    (DATA, 452, "insufficient storage", RETRY),
    (RCPT, 550, "5.1.1 user unknown", SUPPRESS),
    (RCPT, 550, "no such user", SUPPRESS),
    (RCPT, 550, "5.7.1 Relaying denied", OURS),
    (RCPT, 550, "Relaying denied", OURS),
    (RCPT, 550, "5.1.0 Sender address rejected", OURS),
    (RCPT, 550, "5.1.8 sender domain has no MX", OURS),
    (RCPT, 552, "5.2.2 mailbox full", RETRY),
    (DATA, 552, "5.3.4 message too big", RETRY),
    (RCPT, 553, "mailbox name not allowed", SUPPRESS),
    (RCPT, 553, "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", OURS),
    (MAIL, 553, "5.1.8 sender address rejected", OURS),
    (RCPT, 554, "5.7.1 rejected by policy", OURS),
    (RCPT, 554, "transaction failed", RETRY),
    (DATA, 554, "5.7.1 message refused as spam", OURS),
    (DATA, 554, "transaction failed", RETRY),
    (GREETING, 554, "no SMTP service here", OURS),
    (AUTH, 535, "5.7.8 bad credentials", OURS),
])
def test_each_smtp_refusal_has_one_outcome(
        kind: type[aiosmtplib.SMTPResponseException], code: int, text: str,
        meaning: str) -> None:
    refusal = explain(_refusal(kind, code, text))
    assert refusal.status == code
    outcome = of_email(refusal.status, refusal.fault, 1, STEPS, random.Random(1))
    done = of_email(refusal.status, refusal.fault, LAST + 1, STEPS, random.Random(1))
    if meaning == SUPPRESS:
        assert outcome == done == Outcome(OutcomeKind.FAILED, suppress=True)
    elif meaning == OURS:  # never done: a subscriber loses nothing to an outage of ours
        for o in (outcome, done, of_email(code, refusal.fault, 50, DEFAULT_SCHEDULE)):
            assert o.kind is OutcomeKind.RETRY and o.ours and not o.suppress
            assert 0 < (o.delay or 0) <= OUR_FAULT_MAX_DELAY_S
    else:
        assert outcome.kind is OutcomeKind.RETRY and not (outcome.ours or outcome.suppress)
        assert done == Outcome(OutcomeKind.FAILED)


def test_250_delivers() -> None:
    assert of_email(250, None, LAST + 1, STEPS) == Outcome(OutcomeKind.DELIVERED)


def test_every_refused_recipient_is_judged_by_the_first() -> None:
    refused = aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "a@example.org")])
    refusal = explain(refused)
    assert of_email(refusal.status, refusal.fault, 1, STEPS).suppress


@pytest.mark.parametrize(("exc", "ours"), [
    (aiosmtplib.SMTPTimeoutError("timed out"), False),
    (aiosmtplib.SMTPServerDisconnected("gone"), False),
    (ConnectionResetError("reset"), False),
    (aiosmtplib.SMTPConnectError("could not connect"), True),
    (ssl.SSLError("handshake"), True),
    (aiosmtplib.SMTPNotSupported("no STARTTLS"), True),
    (aiosmtplib.SMTPException("no AUTH offered"), True),
])
def test_no_reply_is_retried_and_never_suppresses(exc: Exception, ours: bool) -> None:
    refusal = explain(exc)
    assert refusal.status == 0
    outcome = of_email(refusal.status, refusal.fault, LAST + 1, STEPS)
    assert not outcome.suppress
    if ours:
        assert outcome.kind is OutcomeKind.RETRY and outcome.ours
    else:
        assert outcome == Outcome(OutcomeKind.FAILED)
        assert of_email(refusal.status, refusal.fault, 1, STEPS).kind is OutcomeKind.RETRY


def test_a_failure_inside_the_notifier_follows_the_schedule() -> None:
    assert again(1, STEPS, rng=random.Random(2)).kind is OutcomeKind.RETRY
    assert again(LAST + 1, STEPS) == Outcome(OutcomeKind.FAILED)


# --- how a claimed delivery goes out ---------------------------------------------------------


def _delivery(**over: Any) -> Delivery:
    fields: dict[str, Any] = dict(
        id=uuid.UUID(int=1), kind="matches", body=b"{}", attempts=1, item_count=1,
        oldest_change_at=None, trace_contexts=None, subscription_id="sub_1",
        channel="webhook", url="https://example.org/hook", address=None,
        contact_email="owner@example.org", enabled=True, verified=False,
        unsubscribe_token="tok", digest="immediate", secret=None, previous_secret=None,
        failing=False, owner="org_1")
    return Delivery(**fields | over)


def test_a_webhooks_notice_goes_by_email_to_its_contact() -> None:
    alert, notice = _delivery(), _delivery(kind="notice")
    assert (alert.sent_by, notice.sent_by) == ("webhook", "email")
    assert notice.recipient == "owner@example.org"
    email = _delivery(channel="email", address="me@example.org", verified=True)
    assert (email.sent_by, email.recipient) == ("email", "me@example.org")
    assert alert.webhook_id == "msg_" + "0" * 31 + "1"


def test_what_a_disabled_or_unconfirmed_subscription_still_sends() -> None:
    assert _delivery().cancel_reason is None
    assert _delivery(enabled=False).cancel_reason == "subscription disabled"
    unconfirmed = _delivery(channel="email", address="me@example.org")
    assert unconfirmed.cancel_reason == "address not verified"
    for kind in ("verify", "notice"):  # about the subscription's state: they go
        assert _delivery(kind=kind, enabled=False).cancel_reason is None
