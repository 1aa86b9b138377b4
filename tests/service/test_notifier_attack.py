"""Adversarial review of issue 14 (routing version, per-organization limits, email faults,
attempts that always end recorded). Each test here failed when it was written unless its
docstring says it passes (those cover a claim nothing else exercises)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest

from contracts.matches import match_event_id
from services.notifier.settings import NotifierSettings
from services.registry.store import Store
from tests.conftest import auth
from tests.support.builders import deliveries, email_subscription, subscribe
from tests.support.helpers import (
    InProcess,
    confirm,
    consumed,
    eventually,
    metric,
    notifier_api,
    publish_matches,
    wait_ready,
)
from tests.support.receivers import FixedAnswer, MailServer, Receiver, ScriptedMailServer

ATTEMPTS = 4  # the tests' schedule (0.3, 0.6, 0.9): a first attempt and three more
CONFIG_ERRORS = "makelocal_notifier_smtp_config_errors_total"


# --- peers that answer with bytes no library would write ---------------------------------


class RawSmtp:
    """A minimal SMTP server whose RCPT reply is raw bytes (aiosmtpd writes only what it
    can encode). Everything else is accepted."""

    def __init__(self, rcpt_reply: bytes) -> None:
        self.rcpt_reply = rcpt_reply
        self.tries: Counter = Counter()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 raw.example ESMTP\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-raw.example\r\n250 8BITMIME\r\n")
                elif verb == b"RCPT":
                    self.tries[line.decode(errors="replace").strip()] += 1
                    writer.write(self.rcpt_reply)
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    writer.write(b"250 OK\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                else:  # MAIL, RSET, NOOP
                    writer.write(b"250 OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _only_delivery(http: httpx.AsyncClient, key: str,
                         sub_id: str) -> dict[str, Any] | None:
    """The subscription's one delivery (None before it is made)."""
    listed = await deliveries(http, key, sub_id)
    assert len(listed) <= 1, listed
    return listed[0] if listed else None


async def _shown(http: httpx.AsyncClient, key: str, sub_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/subscriptions/{sub_id}", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


async def _stuck_or_done(http: httpx.AsyncClient, key: str, sub_id: str, want: str,
                         sent: Any, timeout: float) -> dict[str, Any]:
    """The subscription's one delivery once its status is `want`; else an AssertionError
    that says how often it went out and how often that was recorded."""
    async def done() -> dict[str, Any] | None:
        delivery = await _only_delivery(http, key, sub_id)
        return delivery if delivery and delivery["status"] == want else None

    try:
        return await eventually(done, timeout=timeout)
    except AssertionError:
        delivery = await _only_delivery(http, key, sub_id) or {
            "status": None, "attempts_log": [], "attempts": 0}
        raise AssertionError(
            f"still {delivery['status']!r} after {timeout:g} s: sent {sent()} times,"
            f" {len(delivery['attempts_log'])} attempts recorded, claimed"
            f" {delivery['attempts']} times") from None


# --- 1. an attempt whose recording always fails comes back with every lease, forever ------


async def test_a_webhook_error_body_holding_a_nul_byte_is_recorded_and_fails(
        notifier: InProcess, org: tuple[str, str]) -> None:
    """A receiver answers 500 with a NUL byte in its body. Text with NUL cannot be stored
    in PostgreSQL, so store.finish raises every time; _attempt re-raises because the
    failure was in recording; the lease brings the delivery back, it is POSTed again, and
    so on forever: never failed, never counted against the subscription, nothing in its
    attempt log, the receiver hammered once per lease."""
    peer = FixedAnswer(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 9\r\n"
                       b"connection: close\r\n\r\nerr\x00or \x00!", whole=True)
    base = await peer.start()
    await wait_ready(notifier.url)
    try:
        async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
            sub = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/hook",
                                                 "filter": {"facility_ids": ["fab-nul"]}})
            await publish_matches(notifier.settings.nats_url, [("d1", "fab-nul")])
            delivery = await _stuck_or_done(http, org[1], sub["id"], "failed",
                                            lambda: peer.requests, timeout=20)
        assert [a["status_code"] for a in delivery["attempts_log"]] == [500] * ATTEMPTS
        assert peer.requests == ATTEMPTS
    finally:
        await peer.stop()


async def test_a_webhook_success_whose_body_holds_a_nul_byte_is_sent_once(
        notifier: InProcess, org: tuple[str, str]) -> None:
    """The same through the success path: the Batcher's one write for every success of
    the moment fails, so this delivery (and any other success written with it) is never
    recorded and is sent again after every lease: duplicates without end."""
    peer = FixedAnswer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\x00",
                       whole=True)
    base = await peer.start()
    await wait_ready(notifier.url)
    try:
        async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
            sub = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/hook",
                                                 "filter": {"facility_ids": ["fab-nul2"]}})
            await publish_matches(notifier.settings.nats_url, [("d1", "fab-nul2")])
            await _stuck_or_done(http, org[1], sub["id"], "delivered",
                                 lambda: peer.requests, timeout=12)
            await asyncio.sleep(4)  # past a lease (3 s here)
        assert peer.requests == 1
    finally:
        await peer.stop()


@pytest.mark.parametrize("reply", [
    b"451 4.3.0 temporary failure \xff\xfe in the queue\r\n",  # not UTF-8: surrogates
    b"451 4.3.0 temporary\x00failure\r\n",  # a NUL byte
], ids=["invalid-utf8", "nul"])
async def test_an_smtp_reply_that_cannot_be_stored_still_ends_the_delivery(
        reply: bytes, notifier_settings: NotifierSettings, store: Store,
        org: tuple[str, str]) -> None:
    """aiosmtplib decodes replies with surrogateescape: a reply byte that is not UTF-8
    becomes a lone surrogate, which asyncpg cannot encode; a NUL, PostgreSQL refuses. The
    refusal's text goes unfiltered into store.finish, which raises on every attempt, so
    the mail is tried again at every lease and never recorded (nor failed)."""
    server = RawSmtp(reply)
    port = await server.start()
    try:
        async with notifier_api(notifier_settings.model_copy(update={"smtp_port": port})
                                ) as http:
            sub = await email_subscription(http, org[1], "someone@example.org")
            delivery = await _stuck_or_done(http, org[1], sub["id"], "failed",
                                            lambda: sum(server.tries.values()), timeout=20)
        assert len(delivery["attempts_log"]) == ATTEMPTS
        assert sum(server.tries.values()) == ATTEMPTS
    finally:
        await server.stop()


# --- 2. refusals about us read as "the recipient does not exist" -------------------------


OUR_FAULTS_AT_RCPT = {
    # Postfix's reject_unlisted_sender (smtpd_delay_reject=yes, the default, reports it at
    # RCPT): our From address is unknown to the relay; 5.1.0, not 5.1.7/5.1.8
    "postfix-unlisted-sender": "550 5.1.0 <alerts@makelocal.localhost>: Sender address"
                               " rejected: User unknown in local recipient table",
    # qmail refusing to relay for us: no enhanced code in front, no word "relay"
    "qmail-rcpthosts": "553 sorry, that domain isn't in my list of allowed rcpthosts"
                       " (#5.7.1)",
}


@pytest.mark.parametrize("name", list(OUR_FAULTS_AT_RCPT))
async def test_a_refusal_about_us_at_rcpt_does_not_suppress_the_recipient(
        name: str, notifier_settings: NotifierSettings, store: Store,
        org: tuple[str, str]) -> None:
    """Both replies say nothing about the recipient: our sender address or our right to
    relay is refused, so every recipient gets it. Read as Fault.MAILBOX, each address in
    turn is suppressed for 30 days and its mail failed after one try, and nothing is
    counted as our configuration (no MakelocalSmtpRefusesUs alert)."""
    with ScriptedMailServer({"RCPT": OUR_FAULTS_AT_RCPT[name]}) as server:
        async with notifier_api(notifier_settings.model_copy(
                update={"smtp_port": server.port})) as http:
            sub = await email_subscription(http, org[1], "reader@example.org")

            async def settled() -> dict[str, Any] | None:
                delivery = await _only_delivery(http, org[1], sub["id"])
                return delivery if delivery and (delivery["status"] != "pending"
                                    or len(delivery["attempts_log"]) >= 2) else None

            delivery = await eventually(settled, timeout=20)
            shown = await _shown(http, org[1], sub["id"])
            config_errors = await metric(http, CONFIG_ERRORS)
    assert shown["suppressed_until"] is None, "the recipient was suppressed for our fault"
    assert delivery["status"] == "pending" and len(delivery["attempts_log"]) >= 2, delivery
    assert config_errors >= 1


def test_a_recipient_unknown_in_a_relay_recipient_table_is_not_our_fault() -> None:
    """Postfix without enhanced status codes (smtpd_discard_ehlo_keywords, or a gateway
    that strips them) refuses a recipient that does not exist, on a relay domain, with
    this text. The word "relay" makes it Fault.CONFIG: retried every 5 minutes without
    end, counted and alerted on as our configuration, never suppressed."""
    from services.notifier.refusals import Fault, fault

    assert fault("RCPT TO", 550, "<nobody@example.org>: Recipient address rejected:"
                 " User unknown in relay recipient table") is not Fault.CONFIG


# --- 3. consent: the recipient's unsubscribe, the owner's re-enable ----------------------


async def test_an_unsubscribed_address_gets_no_alerts_after_its_owner_re_enables(
        notifier: InProcess, org: tuple[str, str], mail_server: MailServer) -> None:
    """The recipient pressed Unsubscribe; the organization that typed the address then
    PATCHes {"enabled": true}, which clears disabled_reason='unsubscribed': alerts flow to
    the person who said stop, and contact_verified() counts the address as confirmed
    again (disabled notices of every webhook of that organization go to it too)."""
    address = "quits@example.org"
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        sub = await email_subscription(http, org[1], address, facility_ids=["fab-quit"])
        await confirm(http, mail_server, address)
        token = await notifier.app.state.store.pool.fetchval(
            "SELECT unsubscribe_token FROM subscriptions WHERE id = $1", sub["id"])
        page = await http.post(f"/v1/email/unsubscribe?token={token}")
        assert page.status_code == 200 and "Unsubscribed" in page.text
        again = await http.patch(f"/v1/subscriptions/{sub['id']}", headers=auth(org[1]),
                                 json={"enabled": True})
        assert again.status_code == 409 and again.json()["error"]["code"] == "unsubscribed"
        await publish_matches(notifier.settings.nats_url, [("d1", "fab-quit")])
        await eventually(lambda: consumed(http, 1))
        await asyncio.sleep(4)  # the tests' email linger is 0.2 s, its max wait 1 s
    alerts = [m for m in mail_server.to(address) if m["Subject"].startswith("makelocal:")]
    assert not alerts, "an alert reached an address that unsubscribed"


# --- 5. the routing version --------------------------------------------------------------


async def test_a_missing_routing_version_row_does_not_stop_consuming(
        notifier: InProcess, org: tuple[str, str], receiver: tuple[Receiver, str]) -> None:
    """routing_version() is int(fetchval(...)): with the one row gone (a restore of data
    without it, a maintenance DELETE) it raises TypeError before every batch, and
    routable() raises IndexError at start: every notifier's consumer restarts forever and
    no match is routed again, although every subscription is intact."""
    app, base = receiver
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/versionless",
                                       "filter": {"facility_ids": ["fab-v"]}})
        await notifier.app.state.store.pool.execute("DELETE FROM routing_version")
        [event_id] = await publish_matches(notifier.settings.nats_url, [("d1", "fab-v")])

        async def received() -> bool:
            return any(e["event_id"] == event_id for r in app.at("/versionless")
                       for e in r.json["data"]["events"])

        await eventually(received, timeout=15)


async def test_a_change_made_under_another_schemas_search_path_reaches_the_notifiers(
        notifier_settings: NotifierSettings, store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    """routing_changed() names routing_version (and subscription_changes) unqualified: it
    bumps whichever the *session's* search_path finds. Several deployments share a
    database by schema (the limit's advisory lock says so; every test here does): a
    re-enabling made from a session whose search_path is another notifier's schema bumps
    that schema's version, not this one's, and this deployment's notifiers keep the
    subscription out of routing until the next full reload (30 s by default). (From a
    session with no notifier schema in its search_path, e.g. psql with the table
    schema-qualified, every UPDATE of subscriptions fails: relation "routing_version"
    does not exist.)"""
    from services.common import db

    app, base = receiver
    settings = notifier_settings
    neighbour = settings.notifier_db_schema + "_b"  # another deployment, same database
    await db.migrate(settings.database_url, neighbour, "services.notifier")
    async with notifier_api(settings) as http:
        sub = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/back",
                                             "filter": {"facility_ids": ["fab-sp"]}})
        off = await http.patch(f"/v1/subscriptions/{sub['id']}", headers=auth(org[1]),
                               json={"enabled": False})
        assert off.status_code == 200
        await publish_matches(settings.nats_url, [("while-off", "fab-sp")])
        await eventually(lambda: consumed(http, 1))  # the index holds the disabling
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(f'SET search_path TO "{neighbour}"')
            await conn.execute(f'UPDATE "{settings.notifier_db_schema}".subscriptions'
                               " SET enabled = true, disabled_reason = NULL WHERE id = $1",
                               sub["id"])
        finally:
            await conn.close()
        [event_id] = await publish_matches(settings.nats_url, [("after", "fab-sp")])

        async def received() -> bool:
            return any(e["event_id"] == event_id for r in app.at("/back")
                       for e in r.json["data"]["events"])

        await eventually(received, timeout=12)


# Sleeps 1.5 s at the start of the first statement inserting items (a sequence counts the
# statements: no rollback takes it back), so that a subscription can be deleted between the
# batch's routing and its items' foreign-key checks.
SLOW_FIRST_INSERT = """
CREATE SEQUENCE item_inserts;
CREATE FUNCTION slow_first_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('item_inserts') = 1 THEN
        PERFORM pg_sleep(1.5);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER slow_first_insert BEFORE INSERT ON items
    FOR EACH STATEMENT EXECUTE FUNCTION slow_first_insert();
"""


async def test_a_subscription_deleted_mid_batch_loses_nothing_for_the_others(
        notifier: InProcess, org: tuple[str, str], receiver: tuple[Receiver, str]) -> None:
    """Passes. The batch was routed to S and T; S is deleted before the items are stored:
    the INSERT fails on S's foreign key, the batch is nak'd, the consumer restarts with a
    fresh index, and on redelivery T gets the match and S nothing (no batch lost, no
    consumer stuck)."""
    app, base = receiver
    settings = notifier.settings
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        doomed = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/doomed",
                                                "filter": {"facility_ids": ["fab-mid"]}})
        await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/kept",
                                       "filter": {"facility_ids": ["fab-mid"]}})
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(f'SET search_path TO "{settings.notifier_db_schema}"')
            await conn.execute(SLOW_FIRST_INSERT)
            [event_id] = await publish_matches(settings.nats_url, [("d1", "fab-mid")])

            async def inserting() -> bool:
                return bool(await conn.fetchval(
                    "SELECT is_called FROM item_inserts"))

            await eventually(inserting, timeout=15)
            gone = await http.delete(f"/v1/subscriptions/{doomed['id']}",
                                     headers=auth(org[1]))
            assert gone.status_code == 204

            async def received() -> bool:
                return any(e["event_id"] == event_id for r in app.at("/kept")
                           for e in r.json["data"]["events"])

            await eventually(received, timeout=20)
            assert await conn.fetchval("SELECT last_value FROM item_inserts") >= 2
        finally:
            await conn.close()
    assert not app.at("/doomed")


BAD_FILTER = '{"processes": ["a-process-the-vocabulary-dropped"]}'


async def test_one_unreadable_filter_does_not_stop_a_reload(
        notifier_settings: NotifierSettings, store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    """Passes. A stored filter the vocabulary no longer reads (written before a process
    was dropped) is skipped by the reload; a subscription created after it, through the
    API and so through the version trigger, still gets its matches."""
    app, base = receiver
    settings = notifier_settings.model_copy(update={"notifier_reload_s": 0.5})
    async with notifier_api(settings) as http:
        bad = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/bad",
                                             "filter": {"facility_ids": ["fab-r"]}})
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(f'SET search_path TO "{settings.notifier_db_schema}"')
            await conn.execute("UPDATE subscriptions SET filter = $2::jsonb WHERE id = $1",
                               bad["id"], BAD_FILTER)
        finally:
            await conn.close()
        await asyncio.sleep(1.2)  # a full reload or two over the bad row
        await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/good",
                                       "filter": {"facility_ids": ["fab-r"]}})
        [event_id] = await publish_matches(settings.nats_url, [("d1", "fab-r")])

        async def received() -> bool:
            return any(e["event_id"] == event_id for r in app.at("/good")
                       for e in r.json["data"]["events"])

        await eventually(received, timeout=15)
    assert not app.at("/bad")
    assert event_id == match_event_id("found", "d1", 1, "fab-r", 1)
