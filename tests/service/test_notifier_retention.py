"""The notifier's storage stays bounded, and nothing unreadable stops it: finished
deliveries (with their attempts), gathered items and parked messages are dropped past
their retention, while an item's key still deduplicates a pair MATCHES brings again
within it; a MATCHES message that is not ours is parked (kept, counted, acked) and the
stream moves on."""

from __future__ import annotations

import zlib
from typing import Any

import asyncpg
import nats

from contracts import matches
from tests.conftest import auth
from tests.support.builders import subscribe
from tests.support.helpers import eventually, metric, notifier_api, publish_matches
from tests.support.receivers import Receiver


async def _count(settings: Any, table: str) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return int(await conn.fetchval(
            f'SELECT count(*) FROM "{settings.notifier_db_schema}".{table}'))
    finally:
        await conn.close()


async def test_unreadable_messages_are_parked_and_the_rest_delivered(
        notifier_settings: Any, store: Any, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    async with notifier_api(notifier_settings) as http:
        await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/parked-ok",
                                       "filter": {"facility_ids": ["fab-park"]}})
        nc = await nats.connect(notifier_settings.nats_url)
        try:
            js = nc.jetstream()
            bad = {
                "not JSON": (b"\x00\xffnot json", {}),
                "JSON, not a change": (b'{"hello": "world"}', {}),
                "wrong types": (b'{"schema_version": "two", "pairs": 7}', {}),
                "deflate that is not": (b"garbage", {matches.ENCODING_HEADER: "deflate"}),
                "a bomb": (zlib.compress(b"[" * 50_000_000),
                           {matches.ENCODING_HEADER: "deflate"}),
            }
            for i, (data, headers) in enumerate(bad.values()):
                await js.publish(f"matches.design.bad-{i}", data, headers=headers or None)
        finally:
            await nc.close()
        await publish_matches(notifier_settings.nats_url, [("d-after", "fab-park")])

        async def delivered() -> bool:
            return bool(app.at("/parked-ok"))

        await eventually(delivered, timeout=15)
        assert await metric(http, "makelocal_notifier_parked_messages_total") == len(bad)
    conn = await asyncpg.connect(notifier_settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT subject, stream_seq, reason, size, length(data) AS kept FROM"
            f' "{notifier_settings.notifier_db_schema}".parked_messages ORDER BY id')
    finally:
        await conn.close()
    assert [r["subject"] for r in rows] == [f"matches.design.bad-{i}" for i in range(len(bad))]
    assert all(r["stream_seq"] and r["reason"] and r["kept"] <= 64 * 1024 for r in rows)


async def test_history_is_dropped_past_its_retention_and_keys_deduplicate_until_then(
        notifier_settings: Any, store: Any, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    settings = notifier_settings.model_copy(update={
        "notifier_delivery_retention_s": 1.0, "notifier_item_retention_s": 4.0,
        "notifier_prune_every_s": 0.3})
    async with notifier_api(settings) as http:
        sub = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/kept",
                                             "filter": {"facility_ids": ["fab-kept"]}})
        [event] = await publish_matches(settings.nats_url, [("d-kept", "fab-kept")])

        await eventually(lambda: app.has_events("/kept", 1), timeout=15)

        # the delivery and its attempts go after a second; the item stays
        async def deliveries_gone() -> bool:
            return await _count(settings, "deliveries") == 0

        await eventually(deliveries_gone, timeout=10)
        assert await _count(settings, "attempts") == 0
        assert await _count(settings, "items") == 1
        logged = await http.get(f"/v1/subscriptions/{sub['id']}/deliveries",
                                headers=auth(org[1]))
        assert logged.json()["items"] == []
        # the same pair again (a replay past JetStream's duplicate window): its kept key
        # makes it a no-op
        await publish_matches(settings.nats_url, [("d-kept", "fab-kept")], msg_id=False)

        async def consumed_twice() -> bool:
            return await metric(http, "makelocal_notifier_pairs_consumed_total") >= 2

        await eventually(consumed_twice, timeout=10)

        async def items_gone() -> bool:
            return await _count(settings, "items") == 0

        await eventually(items_gone, timeout=15)
        assert app.events("/kept") == 1
        text = (await http.get("/metrics")).text
        assert 'makelocal_notifier_pruned_rows_total{table="items"} 1.0' in text, text
        assert 'makelocal_notifier_pruned_rows_total{table="deliveries"} 1.0' in text
    assert [e["event_id"] for r in app.at("/kept") for e in r.json["data"]["events"]] == [
        event]
