"""What one organization can make the notifier do is bounded: the subscriptions it may
hold (429 past the limit, also under concurrent creates through two notifiers), and the
rows one INSERT of a batch's items may carry (a wide change for many subscriptions is
stored in several statements, all of them or none)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx

from services.notifier.settings import NotifierSettings
from services.notifier.store import ITEM_ROWS_PER_STATEMENT
from services.registry.store import Store
from tests.conftest import auth
from tests.support.builders import subscribe
from tests.support.helpers import InProcess, eventually, notifier_api, publish_matches, wait_ready
from tests.support.receivers import Receiver


def hook(base: str, n: int) -> dict[str, Any]:
    return {"channel": "webhook", "url": f"{base}/ok/{n}", "filter": {"facility_ids": ["f1"]}}


def refused_for_the_limit(response: httpx.Response, limit: int) -> bool:
    assert response.status_code == 429, response.text
    assert "Retry-After" not in response.headers  # waiting frees no slot
    assert response.json() == {"error": {
        "code": "subscription_limit", "field": "Authorization", "limit": limit,
        "message": f"this organization holds {limit} subscriptions, the most it may:"
                   " delete one to make another"}}
    return True


async def test_an_organization_holds_at_most_its_limit_of_subscriptions(
        notifier_settings: NotifierSettings, store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    _, base = receiver
    settings = notifier_settings.model_copy(update={"notifier_max_subscriptions_per_org": 3})
    other = await store.create_organization("Other Lab")
    async with notifier_api(settings) as http:
        subs = [await subscribe(http, org[1], hook(base, 0)),
                await subscribe(http, org[1], {"channel": "email",
                                               "address": "limit@example.org"}),
                await subscribe(http, org[1], hook(base, 2))]
        new = hook(base, 3)
        assert refused_for_the_limit(
            await http.post("/v1/subscriptions", headers=auth(org[1]), json=new), 3)
        assert refused_for_the_limit(
            await http.post("/v1/subscriptions", headers=auth(org[1]), json={
                "channel": "email", "address": "more@example.org"}), 3)
        # the limit is each organization's own
        await subscribe(http, other[1], new)
        # a disabled subscription keeps its place (re-enabling it can never go past)
        sub_id = subs[0]["id"]
        off = await http.patch(f"/v1/subscriptions/{sub_id}", headers=auth(org[1]),
                               json={"enabled": False})
        assert off.status_code == 200 and off.json()["enabled"] is False
        assert refused_for_the_limit(
            await http.post("/v1/subscriptions", headers=auth(org[1]), json=new), 3)
        on = await http.patch(f"/v1/subscriptions/{sub_id}", headers=auth(org[1]),
                              json={"enabled": True})
        assert on.status_code == 200 and on.json()["enabled"] is True
        # a deleted one frees its place
        gone = await http.delete(f"/v1/subscriptions/{sub_id}", headers=auth(org[1]))
        assert gone.status_code == 204
        await subscribe(http, org[1], new)
        listed = await http.get("/v1/subscriptions", headers=auth(org[1]))
        assert len(listed.json()["items"]) == 3


async def test_concurrent_creates_through_two_notifiers_cannot_both_take_the_last_place(
        notifier_settings: NotifierSettings, store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    from services.notifier.app import create_app

    _, base = receiver
    settings = notifier_settings.model_copy(update={"notifier_max_subscriptions_per_org": 5})
    async with (InProcess(create_app(settings), settings) as one,
                InProcess(create_app(settings), settings) as two,
                httpx.AsyncClient(base_url=one.url, timeout=30) as via_one,
                httpx.AsyncClient(base_url=two.url, timeout=30) as via_two):
        await wait_ready(one.url)
        await wait_ready(two.url)
        for n in range(3):
            await subscribe(via_one, org[1], hook(base, n))
        answers = await asyncio.gather(*(
            (via_one, via_two)[n % 2].post("/v1/subscriptions", headers=auth(org[1]),
                                           json=hook(base, n)) for n in range(3, 23)))
        made = [a for a in answers if a.status_code == 201]
        assert len(made) == 2, [a.text for a in answers]
        assert all(refused_for_the_limit(a, 5) for a in answers if a.status_code != 201)
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval(
            f'SELECT count(*) FROM "{settings.notifier_db_schema}".subscriptions'
            " WHERE owner = (SELECT owner FROM"
            f' "{settings.notifier_db_schema}".subscriptions LIMIT 1)') == 5
    finally:
        await conn.close()


# Per statement inserting items: how many rows it inserted (committed statements only), and
# while `failing` holds a row, the second such statement of any transaction fails; the
# attempts are counted by a sequence, which no rollback takes back.
STATEMENT_LOG = """
CREATE TABLE item_statements (rows bigint NOT NULL);
CREATE TABLE failing (at int);
CREATE SEQUENCE item_statement_attempts;
CREATE FUNCTION log_item_statement() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(nullif(current_setting('test.item_statements', true), ''), '0')::int + 1;
BEGIN
    PERFORM set_config('test.item_statements', n::text, true);
    PERFORM nextval('item_statement_attempts');
    IF n >= 2 AND EXISTS (SELECT FROM failing) THEN
        RAISE EXCEPTION 'the second item statement of this transaction fails';
    END IF;
    INSERT INTO item_statements SELECT count(*) FROM new_items;
    RETURN NULL;
END $$;
CREATE TRIGGER log_item_statement AFTER INSERT ON items REFERENCING NEW TABLE AS new_items
    FOR EACH STATEMENT EXECUTE FUNCTION log_item_statement();
INSERT INTO failing VALUES (1);
"""


async def test_a_wide_change_is_stored_in_bounded_statements_all_or_nothing(
        notifier: InProcess, org: tuple[str, str], receiver: tuple[Receiver, str]) -> None:
    _, base = receiver
    await wait_ready(notifier.url)
    subscribers = 6
    pairs = ITEM_ROWS_PER_STATEMENT // subscribers + 200  # a statement and a part more
    expected = pairs * subscribers
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        for n in range(subscribers):
            await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/ok/{n}",
                                           "filter": {"design_ids": ["wide"]}})
    conn = await asyncpg.connect(notifier.settings.database_url)
    try:
        await conn.execute(f'SET search_path TO "{notifier.settings.notifier_db_schema}"')
        await conn.execute(STATEMENT_LOG)
        await publish_matches(notifier.settings.nats_url,
                              [("wide", f"lab-{i}") for i in range(pairs)])

        async def tried_twice() -> bool:
            # two transactions got to their second statement, and both failed there
            return await conn.fetchval("SELECT last_value FROM item_statement_attempts") >= 4

        await eventually(tried_twice, timeout=30)
        # a failed batch leaves none of its items: its first statement went with it
        assert await conn.fetchval("SELECT count(*) FROM items") == 0
        await conn.execute("DELETE FROM failing")

        async def stored() -> bool:
            return await conn.fetchval("SELECT count(*) FROM items") >= expected

        await eventually(stored, timeout=30)
        sizes = [r["rows"] for r in await conn.fetch("SELECT rows FROM item_statements")]
        assert sum(sizes) == expected == await conn.fetchval("SELECT count(*) FROM items")
        assert len(sizes) >= 2 and max(sizes) <= ITEM_ROWS_PER_STATEMENT, sizes
    finally:
        await conn.close()
