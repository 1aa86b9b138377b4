"""Email against the mail servers people run, each a real aiosmtpd server refusing as they
do: only a recipient that does not exist is suppressed (for a while, and its owner can
lift it); our own configuration is retried, counted and never blamed on the address; a
send is bounded as a whole; a verification link confirms only when its button is
pressed; a disabled-subscription notice goes only to a confirmed address."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from makelocal.embedded import free_port
from services.notifier.settings import NotifierSettings
from services.notifier.transport import SmtpServer, send_mail
from services.registry.store import Store
from tests.conftest import auth
from tests.support.builders import deliveries, email_subscription, subscribe, webhook
from tests.support.helpers import (
    InProcess,
    confirm,
    eventually,
    has_mail,
    metric,
    notifier_api,
    publish_matches,
    wait_ready,
)
from tests.support.receivers import MailServer, Receiver, ScriptedMailServer, text_of

ATTEMPTS = 4  # the tests' schedule: a first attempt and three more
CONFIG_ERRORS = "makelocal_notifier_smtp_config_errors_total"
PASSWORD = "hunter2-relay-password"


@asynccontextmanager
async def notifier_for(settings: NotifierSettings, port: int,
                       **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A notifier sending through the SMTP server on `port`, and a client of its API."""
    async with notifier_api(settings.model_copy(update={"smtp_port": port} | overrides)
                            ) as http:
        yield http


async def _verification(http: httpx.AsyncClient, key: str, sub_id: str,
                        ) -> dict[str, Any] | None:
    """The subscription's verification delivery once it is finished."""
    [delivery] = await deliveries(http, key, sub_id)
    return delivery if delivery["status"] != "pending" else None


async def _past_the_schedule(http: httpx.AsyncClient, key: str, sub_id: str,
                             ) -> dict[str, Any] | None:
    """The verification delivery once it was tried more often than the schedule allows
    a subscriber's fault: a fault of ours never ends it."""
    [delivery] = await deliveries(http, key, sub_id)
    return delivery if len(delivery["attempts_log"]) > ATTEMPTS else None


async def _shown(http: httpx.AsyncClient, key: str, sub_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/subscriptions/{sub_id}", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


# recipient name -> (the server's reply, at which command; suppressed?; our configuration?)
RECIPIENTS = {
    "unknown": ("550 5.1.1 <unknown@example.org>: Recipient address rejected: User unknown",
                "RCPT", True, False),
    "nullmx": ("556 5.1.10 example.org does not accept mail (null MX)", "RCPT", True, False),
    "plain": ("550 Requested action not taken: mailbox unavailable", "RCPT", True, False),
    "relay": ("554 5.7.1 <relay@example.org>: Relay access denied", "RCPT", False, True),
    "relaytext": ("550 Relaying denied", "RCPT", False, True),
    # Postfix refuses a sender at RCPT (smtpd_delay_reject): 5.1.8 is about us
    "sender": ("550 5.1.8 <alerts@makelocal.localhost>: Sender address rejected: "
               "Domain not found", "RCPT", False, True),
    "full": ("552 5.2.2 mailbox full", "RCPT", False, False),
    "policy": ("554 5.7.1 message refused for policy reasons", "DATA", False, True),
}


async def test_only_a_recipient_that_does_not_exist_is_suppressed(
        notifier_settings: NotifierSettings, store: Store, org: tuple[str, str]) -> None:
    key = org[1]
    replies = {f"{stage} {name}": reply for name, (reply, stage, _, _) in RECIPIENTS.items()}
    with ScriptedMailServer(replies) as server:
        async with notifier_for(notifier_settings, server.port) as http:
            subs = {name: (await email_subscription(http, key, f"{name}@example.org"))["id"]
                    for name in RECIPIENTS}
            for name, (reply, _, suppressed, config) in RECIPIENTS.items():
                if config:  # ours: tried past the schedule, never given up
                    done = await eventually(
                        lambda s=subs[name]: _past_the_schedule(http, key, s), timeout=30)
                    assert done["status"] == "pending", name
                    log = done["attempts_log"]
                    assert server.tries[f"{name}@example.org"] >= len(log), name
                else:
                    done = await eventually(
                        lambda s=subs[name]: _verification(http, key, s), timeout=30)
                    assert done["status"] == "failed", name
                    log = done["attempts_log"]
                    # suppressed: not tried again; otherwise the whole schedule
                    assert len(log) == (1 if suppressed else ATTEMPTS), name
                    assert server.tries[f"{name}@example.org"] == len(log), name
                assert log[0]["status_code"] == int(reply[:3])
                assert reply.split(" ", 1)[1] in log[0]["error"]
            ours = sum(1 for *_, config in RECIPIENTS.values() if config)
            assert await metric(http, CONFIG_ERRORS) >= ours * (ATTEMPTS + 1)
            for name, (_, _, suppressed, config) in RECIPIENTS.items():
                shown = await _shown(http, key, subs[name])
                if suppressed:
                    expires = datetime.fromisoformat(shown["suppressed_until"])
                    assert abs(expires - datetime.now(UTC) - timedelta(days=30)) < timedelta(
                        minutes=5), name
                else:
                    assert shown["suppressed_until"] is None, name
                # a fault of ours is not the subscription's
                assert (shown["failing_since"] is None) == config, name


# what in our configuration is wrong -> (the server, the notifier's settings)
OURS = {
    "login refused": (lambda: ScriptedMailServer(
        login=f"535 5.7.8 Authentication credentials invalid: {PASSWORD}"),
        {"smtp_username": "alerts", "smtp_password": SecretStr(PASSWORD)}),
    "STARTTLS required": (lambda: ScriptedMailServer(
        {"MAIL": "530 5.7.0 Must issue a STARTTLS command first"}), {}),
    "sender refused": (lambda: ScriptedMailServer(
        {"MAIL": "553 5.1.8 <alerts@makelocal.localhost>: Sender address rejected"}), {}),
    "STARTTLS not offered": (lambda: ScriptedMailServer(), {"smtp_starttls": True}),
    "no server": (None, {}),
}


@pytest.mark.parametrize("fault", list(OURS))
async def test_our_own_configuration_is_retried_counted_and_never_suppressed(
        fault: str, notifier_settings: NotifierSettings, store: Store, org: tuple[str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    make, settings = OURS[fault]
    server = make() if make else None
    if server is not None:
        server.__enter__()
    try:
        async with notifier_for(notifier_settings, server.port if server else free_port(),
                                **settings) as http:
            sub = await email_subscription(http, org[1], "someone@example.org")
            done = await eventually(lambda: _past_the_schedule(http, org[1], sub["id"]),
                                    timeout=30)
            # the subscriber loses nothing to our outage: still waiting for us
            assert done["status"] == "pending"
            tried = len(done["attempts_log"])
            assert await metric(http, CONFIG_ERRORS) >= tried
            shown = await _shown(http, org[1], sub["id"])
            assert shown["suppressed_until"] is None and shown["failing_since"] is None
    finally:
        if server is not None:
            server.__exit__()
    if server is not None and server.login is not None:
        assert server.logins >= tried  # (aiosmtplib tries each method offered)
        assert all("[password]" in a["error"] for a in done["attempts_log"])
    logged = [r for r in caplog.records if "refused our configuration" in r.getMessage()]
    assert len(logged) >= tried
    for text in [str(r.__dict__) for r in caplog.records] + [str(done)]:
        assert PASSWORD not in text


async def test_the_owner_sees_a_suppression_that_expires_and_can_lift_it(
        notifier_settings: NotifierSettings, store: Store, org: tuple[str, str]) -> None:
    key = org[1]
    _, other = await store.create_organization("Other Lab")
    with ScriptedMailServer({"RCPT": "550 5.1.1 no such user"}) as server:
        async with notifier_for(notifier_settings, server.port,
                                notifier_suppression_days=5 / 86400) as http:
            sub = await email_subscription(http, key, "Moved@Example.org")
            done = await eventually(lambda: _verification(http, key, sub["id"]))
            assert done["status"] == "failed"
            until = (await _shown(http, key, sub["id"]))["suppressed_until"]
            assert until is not None
            assert datetime.fromisoformat(until) - datetime.now(UTC) < timedelta(seconds=6)
            # another organization learns nothing of it and lifts nothing
            path = f"/v1/subscriptions/{sub['id']}"
            assert (await http.get(path, headers=auth(other))).status_code == 404
            assert (await http.delete(f"{path}/suppression", headers=auth(other))
                    ).status_code == 404
            assert (await _shown(http, key, sub["id"]))["suppressed_until"] == until
            # its owner lifts it: the address gets mail again (and is refused again)
            assert (await http.delete(f"{path}/suppression", headers=auth(key))
                    ).status_code == 204
            assert (await _shown(http, key, sub["id"]))["suppressed_until"] is None
            assert (await http.delete(f"{path}/suppression", headers=auth(key))
                    ).status_code == 404
            retried = await http.post(f"/v1/deliveries/{done['id']}/retry", headers=auth(key))
            assert retried.status_code == 202
            await eventually(lambda: _verification(http, key, sub["id"]))
            assert server.tries["moved@example.org"] == 2
            assert (await _shown(http, key, sub["id"]))["suppressed_until"] is not None
            # and it expires by itself: the mailbox was made since
            del server.replies["RCPT"]

            async def expired() -> bool:
                return (await _shown(http, key, sub["id"]))["suppressed_until"] is None

            await eventually(expired, timeout=10)
            await http.post(f"/v1/deliveries/{done['id']}/retry", headers=auth(key))
            confirmed = await eventually(lambda: _verification(http, key, sub["id"]))
            assert confirmed["status"] == "delivered"


async def test_a_send_is_bounded_as_a_whole_not_per_command() -> None:
    """Each command answered in 0.4 s, under the 1 s timeout aiosmtplib applies to each:
    the conversation (EHLO, MAIL, RCPT, DATA) would take 1.6 s and outlive a lease sized
    for 1 s."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = ("a@example.org", "b@example.org",
                                                          "slow")
    message.set_content("slow")
    with ScriptedMailServer(delay=0.4) as server:
        started = time.monotonic()
        result = await send_mail(SmtpServer("127.0.0.1", server.port, False, None, None, 1.0),
                                 message)
        took = time.monotonic() - started
    assert result.status == 0 and result.error == "timed out after 1 s", result
    assert 0.9 <= took < 1.3
    assert not server.messages


async def test_a_verification_link_confirms_only_when_its_button_is_pressed(
        notifier: InProcess, org: tuple[str, str], mail_server: MailServer) -> None:
    """Mail scanners open every link of a message with GET: that must not confirm."""
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        sub = await email_subscription(http, org[1], "scanned@example.org")
        await eventually(lambda: has_mail(mail_server, "scanned@example.org", 1))
        text = text_of(mail_server.to("scanned@example.org")[0])
        link = text[text.index("/v1/email/verify?token="):].split()[0]
        for _ in range(2):  # a scanner, then the person's browser
            page = await http.get(link)
            assert page.status_code == 200
            assert '<form method="post"' in page.text and "scanned@example.org" in page.text
        assert (await _shown(http, org[1], sub["id"]))["verified"] is False
        confirmed = await http.post(link)
        assert confirmed.status_code == 200 and "confirmed" in confirmed.text
        assert (await _shown(http, org[1], sub["id"]))["verified"] is True
        assert (await http.post(link)).status_code == 404  # used
        assert (await http.get(link)).status_code == 404


async def test_a_disabled_notice_goes_only_to_a_confirmed_address(
        notifier: InProcess, org: tuple[str, str], mail_server: MailServer,
        receiver: tuple[Receiver, str]) -> None:
    """A contact address is typed by the subscription's owner and may be anyone's: it
    hears from us only once its recipient confirmed it (an email subscription of the same
    owner, verified, not unsubscribed)."""
    _, base = receiver
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        await email_subscription(http, org[1], "ops@example.org", facility_ids=["none"])
        await confirm(http, mail_server, "ops@example.org")
        subs = {}
        for contact in ("ops@example.org", "stranger@example.org"):
            subs[contact] = await subscribe(http, org[1], webhook(
                f"{base}/gone", facility_ids=[f"fab-{contact.split('@')[0]}"]) | {
                    "contact_email": contact})
        await publish_matches(notifier.settings.nats_url,
                              [("d1", f"fab-{contact.split('@')[0]}") for contact in subs])
        await eventually(lambda: has_mail(mail_server, "ops@example.org", 2), timeout=20)
        assert subs["ops@example.org"]["id"] in text_of(mail_server.to("ops@example.org")[1])

        async def notice() -> dict[str, Any] | None:
            listed = await deliveries(http, org[1], subs["stranger@example.org"]["id"])
            found = [d for d in listed if d["kind"] == "notice" and d["status"] != "pending"]
            return found[0] if found else None

        told = await eventually(notice, timeout=20)
        assert told["status"] == "cancelled"
        assert told["last_error"] == "contact address not verified"
        assert not mail_server.to("stranger@example.org")
