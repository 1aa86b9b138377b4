"""The notifier on match changes of many pairs: one message routed to many subscriptions,
each getting exactly its pairs with their explanations, the message stored once; items
recorded before match_messages existed still delivered."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx
from standardwebhooks import Webhook

from contracts.matches import match_event_id
from tests.support.builders import subscribe
from tests.support.helpers import InProcess, consumed, eventually, publish_matches, wait_ready
from tests.support.receivers import Receiver


def entries(app: Receiver, path: str, secret: str) -> list[dict[str, Any]]:
    return [e for r in app.at(path)
            for e in Webhook(secret).verify(r.body, r.headers)["data"]["events"]]


async def test_one_change_of_300_pairs_reaches_each_subscriber_with_its_pairs(
        notifier: InProcess, org: tuple[str, str], receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        labs = {i: await subscribe(http, org[1], {
            "channel": "webhook", "url": f"{base}/lab/{i}",
            "filter": {"facility_ids": [f"lab-{i}"]}}) for i in (0, 7, 299)}
        author = await subscribe(http, org[1], {
            "channel": "webhook", "url": f"{base}/author",
            "filter": {"design_ids": ["stand"], "event_types": ["matches.found"]}})
        region = await subscribe(http, org[1], {
            "channel": "webhook", "url": f"{base}/region",
            "filter": {"region": {"lat": 48.85, "lon": 2.35, "radius_km": 10}}})
        elsewhere = await subscribe(http, org[1], {
            "channel": "webhook", "url": f"{base}/elsewhere",
            "filter": {"region": {"lat": -33.9, "lon": 18.4, "radius_km": 10}}})
        ids = await publish_matches(notifier.settings.nats_url,
                                    [("stand", f"lab-{i}") for i in range(300)],
                                    facility_lat=48.85, facility_lon=2.35,
                                    design_processes=("fdm",))
        await eventually(lambda: consumed(http, 300), timeout=20)
        await eventually(lambda: app.has_events("/author", 300), timeout=20)
        await eventually(lambda: app.has_events("/region", 300), timeout=20)
        for i, sub in labs.items():
            await eventually(lambda i=i: app.has_events(f"/lab/{i}", 1))
            [entry] = entries(app, f"/lab/{i}", sub["secret"])
            assert entry["event_id"] == ids[i] == match_event_id("found", "stand", 1,
                                                                 f"lab-{i}", 1)
            assert entry["facility_id"] == f"lab-{i}" and entry["design_id"] == "stand"
            assert entry["explanation"] == [{"kind": "status", "need": "active",
                                             "outcome": "met", "by": None, "note": None}]
            assert entry["design_processes"] == ["fdm"] and entry["score"] == 0.9
        got = entries(app, "/author", author["secret"])
        assert sorted(e["event_id"] for e in got) == sorted(ids)
        assert len(entries(app, "/region", region["secret"])) == 300
        assert not app.at("/elsewhere") and elsewhere["id"]
    # the message is kept once; an item per (subscription, pair) points into it
    conn = await asyncpg.connect(notifier.settings.database_url)
    try:
        schema = notifier.settings.notifier_db_schema
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".match_messages') == 1
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".items') == 603
        assert await conn.fetchval(
            f'SELECT count(*) FROM "{schema}".items WHERE payload IS NOT NULL') == 0
    finally:
        await conn.close()


async def test_an_item_recorded_with_its_payload_before_the_migration_is_delivered(
        notifier: InProcess, org: tuple[str, str], receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        sub = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/legacy",
                                             "filter": {"facility_ids": ["old-lab"]}})
        event = {"schema_version": 1, "event_id": "e-legacy", "type": "matches.found",
                 "design_id": "old", "design_version": 1, "facility_id": "old-lab",
                 "facility_version": 1, "score": 1.0, "explanation": [],
                 "facility_lat": None, "facility_lon": None, "design_processes": [],
                 "cause": {"entity": "design", "entity_id": "old", "version": 1}}
        conn = await asyncpg.connect(notifier.settings.database_url)
        try:
            await conn.execute(
                f'INSERT INTO "{notifier.settings.notifier_db_schema}".items'
                " (subscription_id, event_id, payload) VALUES ($1, $2, $3::jsonb)",
                sub["id"], "e-legacy", json.dumps(event))
        finally:
            await conn.close()
        # and a new one beside it, in the same batch
        await publish_matches(notifier.settings.nats_url, [("new", "old-lab")])
        await eventually(lambda: app.has_events("/legacy", 2), timeout=20)
        got = sorted(entries(app, "/legacy", sub["secret"]), key=lambda e: e["design_id"])
        assert [e["design_id"] for e in got] == ["new", "old"]
        assert got[1] == event



async def test_a_kept_message_goes_once_no_waiting_item_points_into_it(
        notifier: InProcess, org: tuple[str, str], receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/pruned",
                                       "filter": {"facility_ids": ["p-lab"]}})
        await subscribe(http, org[1], {"channel": "email", "address": "late@example.org",
                                       "digest": "daily",
                                       "filter": {"facility_ids": ["p-lab-2"]}})
    await publish_matches(notifier.settings.nats_url, [("p-design", "p-lab")])
    await eventually(lambda: app.has_events("/pruned", 1), timeout=20)
    store = notifier.app.state.store
    schema = notifier.settings.notifier_db_schema
    conn = await asyncpg.connect(notifier.settings.database_url)
    try:
        # an unconfirmed email subscription routes nothing; a waiting item, made by hand
        # as the consumer makes them, keeps its message
        await conn.execute(
            f'INSERT INTO "{schema}".match_messages (message_id, body) VALUES ($1, $2)',
            "f" * 32, b"{}")
        await conn.execute(
            f'INSERT INTO "{schema}".items (subscription_id, event_id, message_id, pair)'
            f' SELECT id, $1, $2, 0 FROM "{schema}".subscriptions WHERE channel = $3',
            "e-waiting", "f" * 32, "email")
        assert await store.prune_messages(0) == 1  # the delivered one only
        left = await conn.fetch(f'SELECT message_id FROM "{schema}".match_messages')
        assert [r["message_id"] for r in left] == ["f" * 32]
    finally:
        await conn.close()
