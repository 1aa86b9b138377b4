"""Email alerts through a real SMTP server (aiosmtpd): verification first, digests,
one-click unsubscribe, 5xx suppresses the address, 4xx is retried."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.conftest import auth
from tests.support.builders import email_subscription
from tests.support.helpers import (
    InProcess,
    confirm,
    consumed,
    eventually,
    has_mail,
    publish_matches,
    wait_ready,
)
from tests.support.receivers import MailServer, text_of


async def test_verified_digest_with_one_click_unsubscribe(
        notifier_settings: Any, store: Any, org: tuple[str, str],
        mail_server: MailServer) -> None:
    from services.notifier.app import create_app

    # "close together" with room for a loaded 2-core machine to consume 300 events: an
    # email waits 1 s after the last match, 10 s at most (the defaults are longer still)
    settings = notifier_settings.model_copy(update={"notifier_email_linger_s": 1.0,
                                                    "notifier_email_max_wait_s": 10.0})
    nats_url = settings.nats_url
    async with InProcess(create_app(settings), settings) as notifier, httpx.AsyncClient(
            base_url=notifier.url, timeout=10) as http:
        await wait_ready(notifier.url)
        sub = await email_subscription(http, org[1], "maker@example.org", facility_ids=["f1"])
        await eventually(lambda: has_mail(mail_server, "maker@example.org", 1))
        # before confirmation: nothing but the verification message
        await publish_matches(nats_url, [("early", "f1")])
        await eventually(lambda: consumed(http, 1))  # routed while still unconfirmed
        test = await http.post(f"/v1/subscriptions/{sub['id']}/test", headers=auth(org[1]))
        assert test.status_code == 409
        await confirm(http, mail_server, "maker@example.org")
        # 300 matches close together: one digest email
        await publish_matches(nats_url, [(f"d{i}", "f1") for i in range(300)])
        await eventually(lambda: has_mail(mail_server, "maker@example.org", 2), timeout=20)
        digest = mail_server.to("maker@example.org")[1]
        assert digest["Subject"] == "makelocal: 300 match changes"
        assert "early" not in text_of(digest)
        assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert {p.get_content_type() for p in digest.walk()} >= {"text/plain", "text/html"}
        unsubscribe = digest["List-Unsubscribe"].strip("<>").replace(
            "http://127.0.0.1:8003", str(http.base_url))
        page = await http.get(unsubscribe)
        assert page.status_code == 200 and "<form" in page.text
        assert (await http.get(f"/v1/subscriptions/{sub['id']}", headers=auth(org[1]))
                ).json()["enabled"] is True  # a GET (a link scanner) changes nothing
        done = await http.post(unsubscribe, content=b"List-Unsubscribe=One-Click")
        assert done.status_code == 200
        after = (await http.get(f"/v1/subscriptions/{sub['id']}", headers=auth(org[1]))).json()
        assert after["enabled"] is False and after["disabled_reason"] == "unsubscribed"
        await publish_matches(nats_url, [("late", "f1")])
        await eventually(lambda: consumed(http, 302))
        assert len(mail_server.to("maker@example.org")) == 2



async def test_hard_bounce_suppresses_and_soft_bounce_retries(
        notifier: InProcess, org: tuple[str, str], mail_server: MailServer) -> None:
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        bounce = await email_subscription(http, org[1], "bounce@example.org")
        later = await email_subscription(http, org[1], "later@example.org")

        async def statuses(sub_id: str) -> list[str]:
            response = await http.get(f"/v1/subscriptions/{sub_id}/deliveries",
                                      headers=auth(org[1]))
            return [d["status"] for d in response.json()["items"]]

        # the verification mail to the 550 address fails for good, at the first attempt
        assert await eventually(lambda: _is(statuses(bounce["id"]), ["failed"]))
        assert mail_server.tries["bounce@example.org"] == 1
        # the 451 address gets it on the second attempt
        assert await eventually(lambda: _is(statuses(later["id"]), ["delivered"]))
        assert mail_server.tries["later@example.org"] == 2
        assert len(mail_server.to("later@example.org")) == 1


async def _is(awaitable: Any, expected: list[str]) -> bool:
    return await awaitable == expected


async def test_an_hourly_digest_gathers_for_its_period(
        notifier_settings: Any, store: Any, org: tuple[str, str],
        mail_server: MailServer) -> None:
    """With the hour shortened to 2 s: matches arriving over the period go out as one
    email when the oldest has waited the period, none before."""
    from services.notifier.app import create_app

    settings = notifier_settings.model_copy(update={"notifier_digest_hourly_s": 2.0})
    async with InProcess(create_app(settings), settings) as running, httpx.AsyncClient(
            base_url=running.url, timeout=10) as http:
        await wait_ready(running.url)
        response = await http.post("/v1/subscriptions", headers=auth(org[1]), json={
            "channel": "email", "address": "hourly@example.org", "digest": "hourly"})
        assert response.status_code == 201 and response.json()["digest"] == "hourly"
        await confirm(http, mail_server, "hourly@example.org")
        await publish_matches(settings.nats_url, [(f"d{i}", "f1") for i in range(3)])
        await eventually(lambda: consumed(http, 3))
        started = time.monotonic()
        await asyncio.sleep(0.5)
        await publish_matches(settings.nats_url, [(f"e{i}", "f1") for i in range(2)])
        await eventually(lambda: has_mail(mail_server, "hourly@example.org", 2), timeout=10)
        waited = time.monotonic() - started
        assert waited >= 1.4  # not before the period (less the time to consume)
        digest = mail_server.to("hourly@example.org")[1]
        assert digest["Subject"] == "makelocal: 5 match changes"
        await asyncio.sleep(2.5)
        assert len(mail_server.to("hourly@example.org")) == 2
