"""Whatever goes wrong inside an attempt ends as a recorded failed attempt, retried on the
schedule and at last failed (and its subscription disabled), never a delivery that
comes back with every lease, unrecorded, forever."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.notifier.schedule import parse_retry_after
from tests.conftest import auth
from tests.support.builders import deliveries, subscribe
from tests.support.helpers import InProcess, eventually, metric, publish_matches, wait_ready
from tests.support.receivers import FixedAnswer, Receiver

# the schedule of the tests' settings: a first attempt and three more
ATTEMPTS = 4


# superscript two, Arabic-Indic twelve, Devanagari seven: all str.isdigit()
@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "\u096d", "1\u00b2",
                                   "9" * 40, "12 s", "-5"])
def test_a_retry_after_of_anything_but_ascii_digits_is_not_read(value: str) -> None:
    assert parse_retry_after(value) is None


def test_a_retry_after_in_seconds_or_as_a_date_is_read() -> None:
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: no wait


async def _finished(http: httpx.AsyncClient, key: str, sub_id: str) -> dict[str, Any] | None:
    """The subscription's one delivery once it is failed."""
    logged = await deliveries(http, key, sub_id)
    return logged[0] if len(logged) == 1 and logged[0]["status"] == "failed" else None


async def test_a_503_with_a_retry_after_of_other_digits_is_retried_and_fails(
        notifier: InProcess, org: tuple[str, str]) -> None:
    """"²".isdigit() is true and float("²") raises: the attempt used to escape, and the
    delivery came back with every lease, unrecorded."""
    peer = FixedAnswer("HTTP/1.1 503 Service Unavailable\r\nretry-after: ²\r\n".encode())
    base = await peer.start()
    await wait_ready(notifier.url)
    try:
        async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
            sub = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/hook",
                                                 "filter": {"facility_ids": ["fab-ra"]}})
            await publish_matches(notifier.settings.nats_url, [("d1", "fab-ra")])
            delivery = await eventually(lambda: _finished(http, org[1], sub["id"]),
                                        timeout=30)
        assert [a["status_code"] for a in delivery["attempts_log"]] == [503] * ATTEMPTS
        assert peer.requests == ATTEMPTS
    finally:
        await peer.stop()


async def test_a_secret_that_cannot_be_unsealed_fails_its_attempts_like_any_failure(
        notifier: InProcess, org: tuple[str, str], receiver: tuple[Receiver, str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A stored secret the key does not open (a damaged row, a key changed without its
    rows): unseal raises inside the attempt. Each attempt is recorded in our own words
    and counts against the subscription, and the schedule runs out."""
    app, base = receiver
    url = f"{base}/ok?token=receivers-own-token"
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        sub = await subscribe(http, org[1], {"channel": "webhook", "url": url,
                                             "filter": {"facility_ids": ["fab-seal"]}})
        # what is stored is sealed under the test key; this does not open under it
        damaged = "v1:" + "A" * 40
        await notifier.app.state.store.pool.execute(
            "UPDATE subscriptions SET secret = $2 WHERE id = $1", sub["id"], damaged)
        await publish_matches(notifier.settings.nats_url, [("d1", "fab-seal")])
        delivery = await eventually(lambda: _finished(http, org[1], sub["id"]), timeout=30)
        shown = (await http.get(f"/v1/subscriptions/{sub['id']}", headers=auth(org[1]))).json()
        assert await metric(http, "makelocal_notifier_attempt_errors_total") == ATTEMPTS
    log = delivery["attempts_log"]
    assert [a["status_code"] for a in log] == [0] * ATTEMPTS
    for attempt in log:
        assert "could not make this attempt" in attempt["error"]
        for secret in (sub["secret"], damaged, url, "receivers-own-token", base):
            assert secret not in attempt["error"]
    assert not app.at("/ok")  # nothing unsigned went out
    assert shown["failing_since"] is not None  # on its way to being disabled
    errors = [r for r in caplog.records if "failed inside the notifier" in r.getMessage()]
    assert len(errors) == ATTEMPTS
    for record in errors:
        assert record.exc_info is None  # a traceback's text could hold the URL or secret
        for secret in (sub["secret"], damaged, url, "receivers-own-token"):
            assert secret not in record.getMessage() + str(record.__dict__)
