"""Review of the fan-out notifier's storage: the store as two notifier processes share it
(two Store objects, each with its own Decoded cache, on one schema), the prune, the legacy
and email paths, and a pass that fails half way."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from contracts import matches
from services.common import db
from services.notifier import messages
from services.notifier import store as store_module
from services.notifier.settings import NotifierSettings
from services.notifier.store import Batching, Store
from tests.support.builders import add_items, item_rows, match_piece

BATCH = Batching(max_items=3, max_wait_s=0.0, in_flight=2, email_linger_s=0.0,
                 email_max_wait_s=0.0)


class Stack:
    """Two notifier stores (two processes) on one migrated schema, and a raw connection."""

    def __init__(self, settings: NotifierSettings, pools: list[asyncpg.Pool],
                 conn: asyncpg.Connection) -> None:
        self.settings, self.conn = settings, conn
        self.schema = settings.notifier_db_schema
        self.a, self.b = (Store(p, settings.notifier_keys_schema) for p in pools)
        self.pools = pools

    async def subscription(self, channel: str = "webhook") -> str:
        sub = f"s-{uuid.uuid4().hex[:10]}"
        await self.conn.execute(
            "INSERT INTO subscriptions (id, owner, channel, url, address, filter,"
            " unsubscribe_token, verified) VALUES ($1, 'o', $2, $3, $4, '{}', $5, true)",
            sub, channel, "https://example.org/h" if channel == "webhook" else None,
            "x@example.org" if channel == "email" else None, uuid.uuid4().hex)
        return sub

    async def deliveries(self, sub: str) -> list[dict[str, Any]]:
        rows = await self.conn.fetch(
            "SELECT body FROM deliveries WHERE subscription_id = $1 AND kind = 'matches'"
            # one pass makes its deliveries in one transaction (one created_at): ctid
            # is the order it inserted them in (a fresh schema's table, never updated)
            " ORDER BY created_at, ctid", sub)
        return [orjson.loads(bytes(r["body"])) for r in rows]

    async def waiting(self, sub: str) -> int:
        return await self.conn.fetchval(
            "SELECT count(*) FROM items WHERE subscription_id = $1 AND delivery_id IS NULL",
            sub)


@pytest_asyncio.fixture(loop_scope="session")
async def stack(notifier_settings: NotifierSettings) -> AsyncIterator[Stack]:
    s = notifier_settings
    await db.migrate(s.database_url, s.notifier_db_schema, "services.notifier")
    pools = [await db.create_pool(s.database_url, s.notifier_db_schema, min_size=1,
                                  max_size=3) for _ in range(2)]
    conn = await db.connect(s.database_url, s.notifier_db_schema)
    try:
        yield Stack(s, pools, conn)
    finally:
        await conn.close()
        for p in pools:
            await p.close()


def facilities(bodies: list[dict[str, Any]]) -> list[str]:
    return [e["facility_id"] for b in bodies for e in b["data"]["events"]]


async def wait_blocked(conn: asyncpg.Connection, query_start: str) -> None:
    for _ in range(200):
        if await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE $1", query_start + "%"):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the statement never waited")


# concurrency


async def test_prune_racing_a_redelivered_message_leaves_items_without_their_message(
        stack: Stack) -> None:
    """Was a bug: add_items kept a message with INSERT ... ON CONFLICT DO NOTHING, which
    takes no lock on the row it finds. A prune whose DELETE took its snapshot before the
    consumer's commit (READ COMMITTED: the scan of a large table, or, as here, a row lock
    it waits on) does not see the new items and deletes the message they point into.
    Here: message M was delivered to A and is over a minute old; it is redelivered after
    subscription B was made (ack_wait is 60 s, as long as the prune's grace), so B gets
    an item in M; the prune deletes M. Every other notifier process (no M in its Decoded
    cache) then fails each assembly pass with KeyError: no subscription's batch is ever
    made there again, and the prune (after the assembly in the loop) never runs."""
    a, b, c = [await stack.subscription() for _ in range(3)]
    m = match_piece("d-race", ["lab-1", "lab-2"])
    await add_items(stack.a, m, item_rows([a], m[2]))
    assert (await stack.a.assemble_webhooks(BATCH, 0, 30))[0] == 1
    await stack.conn.execute("UPDATE match_messages SET created_at = now() - interval '1h'")
    # the prune's statement starts, and is held before it reaches M
    locker = await db.connect(stack.settings.database_url, stack.schema)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT 1 FROM match_messages WHERE message_id = $1 FOR UPDATE",
                             m[0])
        prune = asyncio.create_task(stack.a.prune_messages(60))
        await wait_blocked(stack.conn, "DELETE FROM match_messages")
        # the redelivered message, routed to B too, is stored meanwhile: it touches M, so
        # it waits for the same lock, and whichever goes first, M is there after both
        adding = asyncio.create_task(add_items(stack.b, m, item_rows([a, b], m[2])))
        await asyncio.sleep(0.2)
        await tx.commit()
        assert await adding == 2
        await prune
    finally:
        await locker.close()
    # an unrelated subscription's item waits beside it
    other = match_piece("d-other", ["lab-9"])
    await add_items(stack.b, other, item_rows([c], other[2]))
    fresh = Store(stack.pools[1], stack.settings.notifier_keys_schema)  # another process
    made, _ = await fresh.assemble_webhooks(BATCH, 0, 30)
    assert made == 2
    assert facilities(await stack.deliveries(b)) == ["lab-1", "lab-2"]


async def test_two_processes_assembling_at_once_deliver_each_item_once(stack: Stack) -> None:
    """Holds: the subscription lock and the items' FOR UPDATE SKIP LOCKED (rechecked
    against a concurrent commit) put each item into exactly one delivery."""
    subs = [await stack.subscription() for _ in range(6)]
    for round_ in range(4):
        m = match_piece(f"d-both-{round_}", [f"lab-{round_}-{i}" for i in range(7)])
        await add_items(stack.a, m, item_rows(subs, m[2]))
        await asyncio.gather(*(s.assemble_webhooks(BATCH, 2, 30)
                               for s in (stack.a, stack.b, stack.a, stack.b)))
    for _ in range(10):
        await asyncio.gather(stack.a.assemble_webhooks(BATCH, 0, 30),
                             stack.b.assemble_webhooks(BATCH, 0, 30))
    for sub in subs:
        got = facilities(await stack.deliveries(sub))
        assert sorted(got) == sorted(f"lab-{r}-{i}" for r in range(4) for i in range(7))
        assert await stack.waiting(sub) == 0
    assert not await stack.conn.fetchval(
        "SELECT count(*) FROM items i JOIN deliveries d ON d.id = i.delivery_id"
        " WHERE d.item_count <> (SELECT count(*) FROM items j"
        " WHERE j.delivery_id = d.id)")


async def test_a_prune_between_selection_and_fetch_keeps_the_message(stack: Stack,
                                                                     monkeypatch) -> None:
    """Holds: while a pass has selected its items (locked, still waiting), the prune
    sees them waiting and keeps their message, so the pass's fetch finds it."""
    sub = await stack.subscription()
    m = match_piece("d-sel", ["lab-a", "lab-b"])
    await add_items(stack.a, m, item_rows([sub], m[2]))
    await stack.conn.execute("UPDATE match_messages SET created_at = now() - interval '1h'")
    real = store_module._changes
    pruned = []

    async def prune_first(conn: asyncpg.Connection, decoded: messages.Decoded,
                          ids: list[str | None]) -> dict:
        pruned.append(await stack.b.prune_messages(60))
        return await real(conn, decoded, ids)

    monkeypatch.setattr(store_module, "_changes", prune_first)
    fresh = Store(stack.pools[1], stack.settings.notifier_keys_schema)
    assert (await fresh.assemble_webhooks(BATCH, 0, 30))[0] == 1
    assert pruned == [0]
    assert facilities(await stack.deliveries(sub)) == ["lab-a", "lab-b"]
    monkeypatch.undo()
    assert await stack.a.prune_messages(60) == 1  # now nothing waits on it


async def test_a_cache_smaller_than_a_pass_still_renders_every_item(stack: Stack) -> None:
    """Holds: eviction during a pass drops entries from the cache, not from the pass's
    own map of decoded messages."""
    sub = await stack.subscription()
    sent = []
    for i in range(5):
        m = match_piece(f"d-cache-{i}", [f"lab-c{i}"])
        await add_items(stack.a, m, item_rows([sub], m[2]))
        sent.append(f"lab-c{i}")
    fresh = Store(stack.pools[1], stack.settings.notifier_keys_schema)
    fresh.decoded = messages.Decoded(keep=1)
    fresh.decoded.put(m[0], m[2])
    big = Batching(100, 0.0, 2, 0.0, 0.0)
    assert (await fresh.assemble_webhooks(big, 0, 30))[0] == 1
    assert facilities(await stack.deliveries(sub)) == sent


# crash safety


async def test_a_redelivery_after_the_prune_adds_nothing_and_goes_again(stack: Stack) -> None:
    """Holds: the message comes back (no items of its own) and is pruned again; nothing
    is sent twice."""
    sub = await stack.subscription()
    m = match_piece("d-again", ["lab-r"])
    assert await add_items(stack.a, m, item_rows([sub], m[2])) == 1
    await stack.a.assemble_webhooks(BATCH, 0, 30)
    await stack.conn.execute("UPDATE match_messages SET created_at = now() - interval '1h'")
    assert await stack.a.prune_messages(60) == 1
    assert await add_items(stack.b, m, item_rows([sub], m[2])) == 0
    assert await stack.conn.fetchval("SELECT count(*) FROM match_messages") == 1
    assert (await stack.b.assemble_webhooks(BATCH, 0, 30))[0] == 0
    assert await stack.b.prune_messages(0) == 1
    assert facilities(await stack.deliveries(sub)) == ["lab-r"]


async def test_a_pass_failing_after_selection_leaves_everything_waiting(stack: Stack,
                                                                        monkeypatch) -> None:
    """Holds: the pass is one transaction; a failure while rendering (a process killed
    there) leaves no delivery and every item waiting for the next pass."""
    sub = await stack.subscription()
    m = match_piece("d-crash", ["lab-x", "lab-y", "lab-z", "lab-w"])
    await add_items(stack.a, m, item_rows([sub], m[2]))

    def boom(*args: object) -> bytes:
        raise RuntimeError("killed")

    monkeypatch.setattr(messages, "matches_body", boom)
    with pytest.raises(RuntimeError):
        await stack.a.assemble_webhooks(BATCH, 2, 30)
    monkeypatch.undo()
    assert await stack.waiting(sub) == 4 and await stack.deliveries(sub) == []
    await stack.b.assemble_webhooks(BATCH, 2, 30)
    assert facilities(await stack.deliveries(sub)) == ["lab-w", "lab-x", "lab-y", "lab-z"]
    assert [b["data"]["count"] for b in await stack.deliveries(sub)] == [3, 1]


# legacy and email


LEGACY = {"schema_version": 1, "event_id": "e-legacy", "type": "matches.found",
          "design_id": "old", "design_version": 1, "facility_id": "old-lab",
          "facility_version": 1, "score": 1.0, "explanation": [], "facility_lat": None,
          "facility_lon": None, "design_processes": [],
          "cause": {"entity": "design", "entity_id": "old", "version": 1}}


async def test_legacy_and_new_items_in_one_chunk_keep_their_order(stack: Stack) -> None:
    """Holds: the arrays of payloads (NULL for new items), message ids (NULL for legacy
    ones), pairs and event ids line up, in the items' order, across chunk boundaries."""
    sub = await stack.subscription()
    await stack.conn.execute(
        "INSERT INTO items (subscription_id, event_id, payload) VALUES ($1, $2, $3::jsonb)",
        sub, "e-legacy", json.dumps(LEGACY))
    m = match_piece("d-mix", ["lab-1", "lab-2", "lab-3", "lab-4"])
    await add_items(stack.a, m, item_rows([sub], m[2]))
    await stack.conn.execute(
        "INSERT INTO items (subscription_id, event_id, payload) VALUES ($1, $2, $3::jsonb)",
        sub, "e-legacy-2", json.dumps({**LEGACY, "event_id": "e-legacy-2"}))
    await stack.b.assemble_webhooks(BATCH, 0, 30)
    bodies = await stack.deliveries(sub)
    events = [e for b in bodies for e in b["data"]["events"]]
    assert [e["event_id"] for e in events] == ["e-legacy", *(
        matches.match_event_id("found", "d-mix", 1, f"lab-{i}", 1) for i in range(1, 5)),
        "e-legacy-2"]
    assert events[0] == LEGACY and events[1]["facility_id"] == "lab-1"
    assert [b["data"]["count"] for b in bodies] == [3, 3]


async def test_an_email_digest_renders_legacy_and_new_items(stack: Stack) -> None:
    """Holds: the digest renders its sample from the messages and legacy payloads, and
    gathers every waiting item."""
    sub = await stack.subscription("email")
    await stack.conn.execute(
        "INSERT INTO items (subscription_id, event_id, payload) VALUES ($1, $2, $3::jsonb)",
        sub, "e-legacy", json.dumps(LEGACY))
    m = match_piece("d-mail", ["lab-e1", "lab-e2"])
    await add_items(stack.a, m, item_rows([sub], m[2]))
    assert await stack.b.assemble_emails(BATCH) == 1
    [body] = await stack.deliveries(sub)
    assert body["data"]["count"] == 3
    assert [e["facility_id"] for e in body["data"]["events"]] == ["old-lab", "lab-e1",
                                                                   "lab-e2"]
    assert await stack.waiting(sub) == 0


async def test_one_unreadable_kept_message_stops_every_subscriptions_batches(
        stack: Stack) -> None:
    """Was a bug: a pass rendered all its chunks in one transaction, and any error in one
    of them (a kept message gone, as in the prune race; one the current decode refuses
    after an upgrade tightened its checks) aborts the whole pass, every pass: the other
    subscriptions' items are never gathered in this process (not even the email digests
    and the prune, which come after the webhooks in the loop)."""
    broken, healthy = await stack.subscription(), await stack.subscription()
    await stack.conn.execute(
        "INSERT INTO match_messages (message_id, body) VALUES ($1, $2)", "e" * 32,
        b'{"schema_version": 3}')
    await stack.conn.execute(
        "INSERT INTO items (subscription_id, event_id, message_id, pair) VALUES"
        " ($1, 'e-broken', $2, 0)", broken, "e" * 32)
    m = match_piece("d-healthy", ["lab-h"])
    await add_items(stack.a, m, item_rows([healthy], m[2]))
    fresh = Store(stack.pools[1], stack.settings.notifier_keys_schema)
    try:
        await fresh.assemble_webhooks(BATCH, 0, 30)
    except ValueError:
        pass
    assert facilities(await stack.deliveries(healthy)) == ["lab-h"]


async def test_a_failing_assembly_pass_does_not_multiply_the_claim_loop(
        stack: Stack, monkeypatch) -> None:
    """Was a bug (older than this change, made steady by the poisoned pass above): _run_once
    gathered the assembly and the claim loop; when the assembly raises, gather does not
    cancel the claim loop, and restarting() starts another beside it, every sweep. With
    an item whose message is gone, a process gains a claim loop each notifier_sweep_s."""
    from prometheus_client import CollectorRegistry

    from services.notifier.dispatch import Dispatcher
    from services.notifier.guard import Guard
    from services.notifier.metrics import NotifierMetrics

    settings = stack.settings
    metrics = NotifierMetrics(CollectorRegistry())
    guard = Guard(settings.allowed_networks, None, metrics.ssrf_blocked.inc)  # type: ignore[arg-type]
    dispatcher = Dispatcher(stack.a, settings, guard, metrics)

    async def poisoned(*args: object) -> tuple[int, list]:
        raise KeyError("a kept message gone")

    claimers: set[asyncio.Task] = set()
    real_claim = stack.a.claim

    async def claim(*args: Any) -> list:
        claimers.add(asyncio.current_task())  # type: ignore[arg-type]
        return await real_claim(*args)

    monkeypatch.setattr(stack.a, "assemble_webhooks", poisoned)
    monkeypatch.setattr(stack.a, "claim", claim)
    run = asyncio.create_task(dispatcher.run())
    await asyncio.sleep(1.0)
    alive = {t for t in claimers if not t.done()}
    run.cancel()
    for t in claimers:
        t.cancel()
    await asyncio.gather(run, *claimers, return_exceptions=True)
    assert len(alive) <= 1, f"{len(alive)} claim loops running at once"
