"""Two notifiers on one database and one MATCHES consumer, while matches flow without a
pause: a subscription created, re-enabled or confirmed through either of them gets every
match published after that API call returned, whichever notifier consumes it.

Every commit that makes a subscription routable is slowed down here (a deferred trigger
sleeps at commit): the window between a change being counted and its rows becoming
visible, in which a notifier could load its routing index without the change and then
believe itself up to date, is held open for 0.2 s instead of a few microseconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx

from contracts.matches import match_event_id
from services.notifier.settings import NotifierSettings
from services.registry.store import Store
from tests.support.builders import enable, subscribe
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
from tests.support.receivers import MailServer, Receiver

LAB = "watched-lab"  # every published pair is this lab's, and every subscription watches it
SLOW_COMMIT = """
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.2);
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT OR UPDATE OF enabled, verified
    ON subscriptions DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


class Publisher:
    """One match change after another until stopped, each a new design made at LAB.
    `ids` lists their event ids in order, each appended before its publishing starts, so
    that len(ids) read after an API call returned marks the first match published after
    it."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.ids: list[str] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            design = f"design-{len(self.ids)}"
            self.ids.append(match_event_id("found", design, 1, LAB, 1))
            await publish_matches(self.nats_url, [(design, LAB)])
            await asyncio.sleep(0.01)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Publisher]:
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            self.stop.set()
            await task


async def test_every_match_after_a_routing_change_reaches_it_with_two_notifiers(
        notifier_settings: NotifierSettings, store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str], mail_server: MailServer) -> None:
    from services.notifier.app import create_app

    app, base = receiver
    settings = notifier_settings
    key = org[1]
    # the first match each subscription must get: its place in Publisher.ids
    first_due: dict[str, int] = {}
    webhooks: dict[str, str] = {}  # subscription -> the receiver path its matches go to
    async with (InProcess(create_app(settings), settings) as one,
                InProcess(create_app(settings), settings) as two,
                httpx.AsyncClient(base_url=one.url, timeout=30) as via_one,
                httpx.AsyncClient(base_url=two.url, timeout=30) as via_two):
        await wait_ready(one.url)
        await wait_ready(two.url)
        notifiers = (via_one, via_two)
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(f'SET search_path TO "{settings.notifier_db_schema}"')
            await conn.execute(SLOW_COMMIT)
        finally:
            await conn.close()
        async with Publisher(settings.nats_url).running() as publisher:
            await asyncio.sleep(0.5)
            for i in range(8):
                sub = await subscribe(notifiers[i % 2], key, {
                    "channel": "webhook", "url": f"{base}/hook/{i}",
                    "filter": {"facility_ids": [LAB]}})
                first_due[sub["id"]] = len(publisher.ids)
                webhooks[sub["id"]] = f"/hook/{i}"
                await asyncio.sleep(0.2)
            # disabled through one notifier, re-enabled through the other
            for n, sub_id in enumerate(list(webhooks)[1::3]):
                await enable(notifiers[n % 2], key, sub_id, False)
                await asyncio.sleep(0.3)
                await enable(notifiers[(n + 1) % 2], key, sub_id, True)
                first_due[sub_id] = len(publisher.ids)
            # created through one notifier, confirmed through the other
            for n in range(2):
                address = f"watcher-{n}@example.org"
                sub = await subscribe(notifiers[n], key, {
                    "channel": "email", "address": address, "filter": {"facility_ids": [LAB]}})
                await confirm(notifiers[1 - n], mail_server, address)
                first_due[sub["id"]] = len(publisher.ids)
            await asyncio.sleep(1.0)  # matches go on after the last change
        published = publisher.ids

        async def all_consumed() -> bool:
            read = [await metric(http, "makelocal_notifier_pairs_consumed_total")
                    for http in notifiers]
            return sum(read) >= len(published)

        await eventually(all_consumed, timeout=60)

        async def missing() -> dict[str, int]:
            got = await _routed(settings)
            for sub_id, path in webhooks.items():
                got[sub_id] = {e["event_id"] for r in app.at(path)
                               for e in r.json["data"]["events"]}
            return {s: len(set(published[due:]) - got.get(s, set()))
                    for s, due in first_due.items() if set(published[due:]) - got.get(s, set())}

        async def none_missing() -> bool:
            return not await missing()

        try:
            await eventually(none_missing, timeout=30)
        except AssertionError:
            raise AssertionError(
                f"of {len(published)} matches, missing per subscription: {await missing()}"
                f" (due from: {first_due})") from None


async def _routed(settings: NotifierSettings) -> dict[str, set[str]]:
    """The match events routed to each subscription: its items."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT subscription_id, event_id FROM"
                                f' "{settings.notifier_db_schema}".items')
    finally:
        await conn.close()
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["subscription_id"], set()).add(r["event_id"])
    return out


async def test_a_change_no_trigger_counted_is_found_by_the_periodic_reload(
        notifier_settings: NotifierSettings, store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    settings = notifier_settings.model_copy(update={"notifier_reload_s": 0.5})
    async with notifier_api(settings) as http:
        sub = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/restored",
                                             "filter": {"facility_ids": [LAB]}})
        await enable(http, org[1], sub["id"], False)
        # a batch routed since: the index holds the disabling
        await publish_matches(settings.nats_url, [("while-disabled", LAB)])
        await eventually(lambda: consumed(http, 1))
        conn = await asyncpg.connect(settings.database_url)
        try:
            # re-enabled as a restore would: with triggers off, so no version moves
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(f'UPDATE "{settings.notifier_db_schema}".subscriptions'
                               " SET enabled = true WHERE id = $1", sub["id"])
        finally:
            await conn.close()
        await asyncio.sleep(2 * settings.notifier_reload_s)
        [event_id] = await publish_matches(settings.nats_url, [("restored", LAB)])

        async def received() -> bool:
            return any(e["event_id"] == event_id for r in app.at("/restored")
                       for e in r.json["data"]["events"])

        await eventually(received, timeout=20)
