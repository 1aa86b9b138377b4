"""The notifier's SQL: subscriptions, the items waiting to be sent, deliveries and their
attempts. Every state change of a delivery is one transaction, so a crash leaves it either
before or after, never between."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from services.common import db
from services.common.auth import key_owner
from services.common.db import checked_schema
from services.common.text import storable
from services.notifier import messages
from services.notifier.delivery import Delivery
from services.notifier.outcomes import Outcome, OutcomeKind
from services.notifier.rows import (
    Attempt,
    DeliveryRecord,
    LinkedSubscription,
    Replayed,
    Subscription,
)
from services.notifier.shares import NO_LIMIT, Room

# Until when mail to the subscription's address (email) or contact address (webhook) is
# held back because the mail server said it does not exist; null when it is not.
SUPPRESSED_UNTIL = (
    "(SELECT x.expires_at FROM suppressed_addresses x WHERE x.expires_at > now()"
    " AND x.address = lower(coalesce(subscriptions.address, subscriptions.contact_email)))"
    " AS suppressed_until")
SUBSCRIPTION_FIELDS = (
    "id, owner, channel, url, address, filter, digest, verified, enabled, disabled_reason, "
    "contact_email, failing_since, last_success_at, created_at, updated_at, "
    "previous_until, " + SUPPRESSED_UNTIL)
# What an attempt needs of a delivery (d) and its subscription (s): claim() and
# assemble_webhooks() hand out the same rows, as Delivery (_delivery_from_row).
ATTEMPT_FIELDS = (
    "d.id, d.kind, d.body, d.attempts, d.item_count, d.oldest_change_at, d.trace_contexts,"
    " s.id AS subscription_id, s.channel, s.url, s.address, s.contact_email,"
    " s.enabled, s.verified, s.unsubscribe_token, s.digest, s.secret,"
    " CASE WHEN s.previous_until > now() THEN s.previous_secret END AS previous_secret,"
    " s.failing_since IS NOT NULL AS failing, s.owner")
_VERSION = "coalesce((SELECT version FROM routing_version), -1)"
PARKED_KEEP = 64 * 1024  # bytes of an unreadable message kept for the operator
PRUNE_CHUNK = 5000  # rows per pruning statement


@dataclass(frozen=True)
class Retention:
    """How long history is kept (seconds): finished deliveries (their attempt log, and
    their replay) and parked messages; items, whose keys deduplicate MATCHES pairs."""

    deliveries_s: float
    items_s: float
EMAIL_SAMPLE = 100  # matches described one by one in a digest email; the rest are counted
# Items one INSERT carries at most. A batch's items are (pairs x subscriptions that want
# them): a change of 1,200 labs watched by a thousand subscriptions would be one statement
# of 1.2 million rows, its arrays built whole in both processes' memory and sent as one
# protocol message (refused past 1 GB: the batch would fail again on every redelivery).
ITEM_ROWS_PER_STATEMENT = 5_000


log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Batching:
    """When waiting items become a delivery (see settings)."""

    max_items: int
    max_wait_s: float
    in_flight: int
    email_linger_s: float
    email_max_wait_s: float
    hourly_s: float = 3600.0
    daily_s: float = 86400.0


class Store:
    def __init__(self, pool: asyncpg.Pool, keys_schema: str,
                 on_render_failure: Callable[[], None] = lambda: None) -> None:
        self.pool = pool
        self.keys_table = f'"{checked_schema(keys_schema)}".api_keys'
        self.decoded = messages.Decoded()
        # a batch left waiting: its items could not be rendered (counted, logged)
        self.on_render_failure = on_render_failure

    # keys

    async def owner_of(self, key: tuple[str, str]) -> str | None:
        """The organization a valid, unrevoked key belongs to."""
        return await key_owner(self.pool, self.keys_table, key)

    # subscriptions

    async def create_subscription(self, values: dict[str, Any],
                                  first_delivery: bytes | None = None, *,
                                  limit: int | None = None) -> Subscription:
        """Insert it, and in the same transaction the email verification it must send.
        Raises LimitReached when its owner holds `limit` subscriptions already (disabled
        ones too: re-enabling one never goes past the limit)."""
        columns = ", ".join(values)
        params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        async with self.pool.acquire() as conn, conn.transaction():
            if limit is not None:
                await _room_for_one_more(conn, values["owner"], limit)
            row = await conn.fetchrow(
                f"INSERT INTO subscriptions ({columns}) VALUES ({params})"
                f" RETURNING {SUBSCRIPTION_FIELDS}", *values.values())
            if first_delivery is not None:
                await _insert_delivery(conn, row["id"], "verify", first_delivery)
        return _subscription_from_row(row)

    async def subscription(self, subscription_id: str, owner: str) -> Subscription | None:
        return _optional(_subscription_from_row, await self.pool.fetchrow(
            f"SELECT {SUBSCRIPTION_FIELDS} FROM subscriptions WHERE id = $1 AND owner = $2",
            subscription_id, owner))

    async def subscriptions(self, owner: str, after: str | None,
                            limit: int) -> list[Subscription]:
        return [_subscription_from_row(r) for r in await self.pool.fetch(
            f"SELECT {SUBSCRIPTION_FIELDS} FROM subscriptions WHERE owner = $1"
            " AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3", owner, after, limit)]

    async def update_subscription(self, subscription_id: str, owner: str,
                                  values: dict[str, Any]) -> Subscription | None:
        sets = ", ".join(f"{column} = ${i}" for i, column in enumerate(values, start=3))
        return _optional(_subscription_from_row, await self.pool.fetchrow(
            f"UPDATE subscriptions SET {sets}{', ' if sets else ''}updated_at = now()"
            f" WHERE id = $1 AND owner = $2 RETURNING {SUBSCRIPTION_FIELDS}",
            subscription_id, owner, *values.values()))

    async def delete_subscription(self, subscription_id: str, owner: str) -> bool:
        return await self._change_one(
            "DELETE FROM subscriptions WHERE id = $1 AND owner = $2", subscription_id, owner)

    async def rotate_secret(self, subscription_id: str, owner: str, secret: str,
                            overlap_s: float) -> Subscription | None:
        return _optional(_subscription_from_row, await self.pool.fetchrow(
            "UPDATE subscriptions SET previous_secret = secret, secret = $3,"
            " previous_until = now() + $4 * interval '1 second', updated_at = now()"
            " WHERE id = $1 AND owner = $2 AND channel = 'webhook'"
            f" RETURNING {SUBSCRIPTION_FIELDS}", subscription_id, owner, secret, overlap_s))

    async def reseal_secrets(self, reseal: Callable[[str], str | None]) -> tuple[int, int]:
        """Every stored webhook secret (current and previous) passed through `reseal`
        (sealing.Keyring.reseal: the value under the current key, or None when it is
        already), in one transaction holding the rows: either all are re-sealed or none
        (a value `reseal` cannot open raises ResealFailed naming its subscription).
        Returns (subscriptions changed, subscriptions with a secret). `updated_at` is left
        alone: nothing the owner set changed."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, secret, previous_secret FROM subscriptions"
                " WHERE secret IS NOT NULL OR previous_secret IS NOT NULL"
                " ORDER BY id FOR UPDATE")
            ids, secrets, previous = [], [], []
            for row in rows:
                try:
                    new = [reseal(v) if v else None
                           for v in (row["secret"], row["previous_secret"])]
                except ValueError as exc:
                    raise ResealFailed(row["id"], exc) from exc
                if new != [None, None]:
                    ids.append(row["id"])
                    secrets.append(new[0])
                    previous.append(new[1])
            if ids:
                await conn.execute(
                    "UPDATE subscriptions s SET secret = coalesce(n.secret, s.secret),"
                    " previous_secret = coalesce(n.previous, s.previous_secret)"
                    " FROM unnest($1::text[], $2::text[], $3::text[]) AS n(id, secret, previous)"
                    " WHERE s.id = n.id", ids, secrets, previous)
        return len(ids), len(rows)

    async def verify_email(self, token: str) -> bool:
        return await self._change_one(
            "UPDATE subscriptions SET verified = true, verify_token = NULL,"
            " updated_at = now() WHERE verify_token = $1", token)

    async def unsubscribe(self, token: str) -> bool:
        return await self._change_one(
            "UPDATE subscriptions SET enabled = false, disabled_reason = 'unsubscribed',"
            " updated_at = now() WHERE unsubscribe_token = $1 AND enabled", token)

    async def _change_one(self, sql: str, *args: Any) -> bool:
        """One subscription changed (True) or none (the routing indexes are told by the
        table's trigger: migration 005)."""
        result = await self.pool.execute(sql, *args)
        return result.endswith(" 1")

    async def unsubscribe_target(self, token: str) -> str | None:
        return await self.pool.fetchval(
            "SELECT address FROM subscriptions WHERE unsubscribe_token = $1", token)

    async def subscription_by_link(self, token: str) -> LinkedSubscription | None:
        """What an email's manage link shows: the alert its unsubscribe token names."""
        return _optional(_linked_from_row, await self.pool.fetchrow(
            "SELECT address, filter, enabled, verified, disabled_reason FROM subscriptions"
            " WHERE unsubscribe_token = $1 AND channel = 'email'", token))

    async def verify_target(self, token: str) -> str | None:
        """The address a verification link would confirm (none once it was used)."""
        return await self.pool.fetchval(
            "SELECT address FROM subscriptions WHERE verify_token = $1", token)

    # routing

    async def routing_version(self) -> int:
        """The committed version of what routing reads (migration 005); -1 when its row
        was deleted (the next change makes it again)."""
        return int(await self.pool.fetchval(f"SELECT {_VERSION}"))

    async def routable(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """The subscriptions that take alerts now (enabled, and verified if by email) with
        their filters, and the routing version they are at: one statement, so one
        snapshot, and the version describes exactly these rows."""
        rows = await self.pool.fetch(
            f"SELECT v.version, s.id, s.filter FROM (SELECT {_VERSION} AS version) v"
            " LEFT JOIN subscriptions s ON s.enabled AND (s.channel = 'webhook' OR s.verified)")
        return int(rows[0]["version"]), {r["id"]: r["filter"] for r in rows
                                         if r["id"] is not None}

    async def add_items(self, stored: Iterable[tuple[str, bytes, str | None]],
                        rows: Iterable[tuple[str, str, str, int, datetime | None]],
                        traces: Mapping[str, str] | None = None) -> int:
        """The messages (id, body as received, its Content-Encoding) the rows point into,
        and the rows: (subscription, event id, message id, pair, time of the change). A
        pair already present (a redelivered or replayed message) is skipped. All are
        stored or none (the consumer acks the batch once they are). `traces`: the trace
        context of the messages that have one, by message id."""
        rows = list(rows)
        if not rows:
            return 0
        # (a statement may touch a row once: one of each message)
        stored = list({m[0]: m for m in stored}.values())
        traces = traces or {}
        chunks = [rows[i:i + ITEM_ROWS_PER_STATEMENT]
                  for i in range(0, len(rows), ITEM_ROWS_PER_STATEMENT)]
        # one statement is a transaction of its own; more need one around them
        async with self.pool.acquire() as conn, (
                conn.transaction() if len(chunks) > 1 else contextlib.nullcontext()):
            # A message kept already is touched, not skipped: a prune running beside this
            # statement then sees it young again (or, having deleted it first, lets this
            # one insert it anew), and never leaves the new items pointing at nothing.
            added = await conn.fetchval(
                "WITH kept AS (INSERT INTO match_messages (message_id, body, encoding,"
                " trace_context) SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[],"
                " $4::text[]) ON CONFLICT (message_id) DO UPDATE SET created_at = now()),"
                f" added AS ({_insert_items(5)}) SELECT count(*) FROM added",
                [m[0] for m in stored], [m[1] for m in stored], [m[2] for m in stored],
                [traces.get(m[0]) for m in stored], *_columns(chunks[0]))
            for chunk in chunks[1:]:
                added += await conn.fetchval(
                    f"WITH added AS ({_insert_items(1)}) SELECT count(*) FROM added",
                    *_columns(chunk))
        return int(added)

    # deliveries

    async def assemble_emails(self, batching: Batching, *, traced: bool = False) -> int:
        """Gather the waiting items of every email subscription whose digest is due into
        one delivery each (few, large), rendered as messages.matches_body;
        returns the number of deliveries made. `traced`: each keeps the trace contexts
        of its items' messages (_trace_contexts)."""
        b = batching
        ready = await self.pool.fetch(
            "SELECT i.subscription_id FROM items i JOIN subscriptions s"
            " ON s.id = i.subscription_id WHERE i.delivery_id IS NULL AND s.enabled"
            " AND s.channel = 'email' GROUP BY i.subscription_id, s.digest HAVING"
            " (s.digest = 'immediate' AND (max(i.created_at) <= now() - make_interval(secs => $1)"
            "   OR min(i.created_at) <= now() - make_interval(secs => $2)))"
            " OR (s.digest = 'hourly' AND min(i.created_at) <= now() - make_interval(secs => $3))"
            " OR (s.digest = 'daily' AND min(i.created_at) <= now() - make_interval(secs => $4))"
            " LIMIT 200", b.email_linger_s, b.email_max_wait_s, b.hourly_s, b.daily_s)
        made = 0
        for row in ready:
            made += await self._assemble_email(row["subscription_id"], traced)
        return made

    async def assemble_webhooks(self, b: Batching, claim: int, lease_s: float,
                                room: Room = NO_LIMIT, *, traced: bool = False,
                                ) -> tuple[int, list[Delivery]]:
        """Every ready subscription's full batches of `max_items`, and its last partial
        batch when fewer than `in_flight` of its batches are under way (like Nagle's
        algorithm: little latency when quiet, batches under load) or its oldest item
        waited `max_wait_s`. A subscription another process is assembling (row locked)
        is skipped. In one transaction: the batches are chosen and their items locked,
        their bodies rendered here from the match messages (messages.matches_body), then
        the deliveries recorded and the items assigned to them.

        The first `claim` deliveries made are claimed at once, as claim() would (the
        caller attempts them now; should it die, they are due when the lease ends): a
        round trip and a wake-up fewer between a match and its webhook; an owner's within
        its room, as in claim(). Returns (the number of deliveries made, the claimed ones in
        claim()'s shape). `traced`: each keeps the trace contexts of its items' messages
        (_trace_contexts)."""
        async with self.pool.acquire() as conn, conn.transaction():
            chunks = await conn.fetch(ASSEMBLE_WEBHOOKS, b.max_items, b.max_wait_s, claim,
                                      b.in_flight, *room)
            if not chunks:
                return 0, []
            changes = await _changes(conn, self.decoded,
                                     [m for c in chunks for m in c["message_ids"]])
            traces = await _trace_contexts(
                conn, [m for c in chunks for m in c["message_ids"]]) if traced else {}
            ids, subs, bodies, counts, oldest, claimed = [], [], [], [], [], []
            contexts: list[str | None] = []
            item_ids, item_subs, item_events = [], [], []
            for c in chunks:
                delivery_id = uuid.uuid4()
                try:
                    events = messages.item_events(
                        zip(c["payloads"], c["message_ids"], c["pairs"], c["event_ids"],
                            strict=True), changes)
                except Exception as exc:  # its items wait; the others' batches go on
                    self.on_render_failure()
                    log.error("a batch could not be rendered from its match messages",
                              extra={"subscription_id": c["subscription_id"],
                                     "error": repr(exc)[:500]})
                    continue
                ids.append(delivery_id)
                subs.append(c["subscription_id"])
                bodies.append(messages.matches_body(c["subscription_id"], events, c["k"]))
                counts.append(c["k"])
                oldest.append(c["oldest"])
                claimed.append(c["claimed"])
                contexts.append(_joined(c["message_ids"], traces))
                item_ids.extend([delivery_id] * len(c["event_ids"]))
                item_subs.extend([c["subscription_id"]] * len(c["event_ids"]))
                item_events.extend(c["event_ids"])
            rows = await conn.fetch(
                """
                WITH made AS (
                    INSERT INTO deliveries (id, subscription_id, kind, body, item_count,
                                            oldest_change_at, next_attempt_at, attempts,
                                            trace_contexts)
                    SELECT u.id, u.sub, 'matches', u.body, u.k, u.oldest,
                           CASE WHEN u.claimed THEN now() + make_interval(secs => $7)
                                ELSE now() END,
                           CASE WHEN u.claimed THEN 1 ELSE 0 END,
                           string_to_array(u.traces, E'\\n')
                    FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::int[],
                                $5::timestamptz[], $6::bool[], $11::text[])
                         AS u(id, sub, body, k, oldest, claimed, traces)
                    RETURNING *),
                -- (a data-modifying CTE runs to completion though nothing reads it)
                assigned AS (
                    UPDATE items i SET delivery_id = a.id
                    FROM unnest($8::uuid[], $9::text[], $10::text[]) AS a(id, sub, event_id)
                    WHERE i.subscription_id = a.sub AND i.event_id = a.event_id)
                -- one row per delivery made, with what an attempt needs (a claimed one was
                -- made with its first attempt counted)
                SELECT {fields} FROM made d JOIN subscriptions s ON s.id = d.subscription_id
                """.replace("{fields}", ATTEMPT_FIELDS), ids, subs, bodies, counts, oldest,
                claimed, lease_s, item_ids, item_subs, item_events, contexts)
        return len(rows), [_delivery_from_row(r) for r in rows if r["attempts"] == 1]

    async def _assemble_email(self, subscription_id: str, traced: bool) -> int:
        """All of one subscription's waiting items as one digest."""
        async with self.pool.acquire() as conn, conn.transaction():
            # One process assembles a subscription at a time; the others skip it.
            sub = await conn.fetchrow(
                "SELECT id, channel FROM subscriptions WHERE id = $1 AND enabled"
                " FOR UPDATE SKIP LOCKED", subscription_id)
            if sub is None:
                return 0
            items = await conn.fetch(
                "SELECT event_id, payload, message_id, pair, occurred_at FROM items"
                " WHERE subscription_id = $1 AND delivery_id IS NULL"
                " ORDER BY created_at, event_id", subscription_id)
            if not items:
                return 0
            delivery_id = uuid.uuid4()
            sample = items[:EMAIL_SAMPLE]
            try:
                changes = await _changes(conn, self.decoded,
                                         [r["message_id"] for r in sample])
                events = messages.item_events(
                    ((r["payload"], r["message_id"], r["pair"], r["event_id"])
                     for r in sample), changes)
            except Exception as exc:  # its items wait; the other digests go on
                self.on_render_failure()
                log.error("a digest could not be rendered from its match messages",
                          extra={"subscription_id": subscription_id,
                                 "error": repr(exc)[:500]})
                return 0
            body = messages.matches_body(subscription_id, events, len(items))
            oldest = min((r["occurred_at"] for r in items if r["occurred_at"]), default=None)
            sampled = [r["message_id"] for r in sample]
            traces = await _trace_contexts(conn, sampled) if traced else {}
            await _insert_delivery(conn, subscription_id, "matches", body, delivery_id,
                                   item_count=len(items), oldest=oldest,
                                   trace_contexts=_joined(sampled, traces))
            await conn.execute(
                "UPDATE items SET delivery_id = $1 WHERE subscription_id = $2"
                " AND event_id = ANY($3::text[])",
                delivery_id, subscription_id, [r["event_id"] for r in items])
            return 1

    async def add_delivery(self, subscription_id: str, kind: messages.DeliveryKind,
                           body: bytes) -> uuid.UUID:
        async with self.pool.acquire() as conn:
            return await _insert_delivery(conn, subscription_id, kind, body)

    async def claim(self, limit: int, lease_s: float, failing_limit: int,
                    room: Room = NO_LIMIT) -> list[Delivery]:
        """Due deliveries, each taken by one process: its next attempt time moves past the
        lease, so if this process dies mid-attempt the delivery is due again after it.
        At most `failing_limit` of them belong to failing subscriptions (whose peers may
        hang until the timeout): those cannot take the slots healthy ones need. An owner
        gets at most the attempts its share leaves room for (shares.Shares.room)."""
        owners, rooms, per_owner = room
        due = ("SELECT d.id, d.next_attempt_at, s.owner FROM deliveries d"
               " JOIN subscriptions s ON s.id = d.subscription_id"
               " WHERE d.status = 'pending' AND d.next_attempt_at <= now()"
               " AND s.failing_since IS {} NULL"
               " AND s.owner <> ALL($6::text[])"
               " ORDER BY d.next_attempt_at LIMIT {} FOR UPDATE OF d SKIP LOCKED")
        rows = await self.pool.fetch(
            f"WITH {RELAXED}, healthy AS ({due.format('', '$1')}),"
            f" failing AS ({due.format('NOT', '$3')}),"
            f" {ROOM},"
            " chosen AS (SELECT u.id FROM (SELECT *, row_number() OVER ("
            "   PARTITION BY owner ORDER BY next_attempt_at) AS k"
            "  FROM (SELECT * FROM healthy UNION ALL SELECT * FROM failing) a) u"
            "  LEFT JOIN room r ON r.owner = u.owner WHERE u.k <= coalesce(r.room, $7)"
            "  ORDER BY u.next_attempt_at LIMIT $1)"
            " UPDATE deliveries d SET next_attempt_at = now() + make_interval(secs => $2),"
            "  attempts = d.attempts + 1"
            " FROM chosen, subscriptions s, relaxed"
            " WHERE d.id = chosen.id AND s.id = d.subscription_id"
            f" RETURNING {ATTEMPT_FIELDS}", limit, lease_s, failing_limit, owners, rooms,
            [o for o, r in zip(owners, rooms, strict=True) if r <= 0], per_owner)
        return [_delivery_from_row(r) for r in rows]

    async def finish(self, delivery_id: uuid.UUID, subscription_id: str, *, status: int,
                     duration_ms: float, error: str | None, response: str | None,
                     outcome: Outcome, disable_after_s: float | None = None,
                     notice: Callable[[str], bytes] | None = None) -> bool:
        """Record an attempt that did not deliver and its consequence: the next attempt
        (RETRY, after its delay), or the end (FAILED, CANCELLED), and whether the
        subscription is disabled (the outcome's reason, or failing for `disable_after_s`).
        Returns True when this attempt disabled the subscription (the caller tells its
        owner). Successes go through `delivered`, many at once. An outcome that is `ours`
        does not count against the subscription (failing, then disabled). `notice`: the
        body telling the owner, given the reason, recorded with the disabling (a crash
        between the two would lose it)."""
        error, response = storable(error), storable(response)
        async with self.pool.acquire() as conn, conn.transaction():
            await _relaxed(conn)
            await conn.execute(
                "INSERT INTO attempts (delivery_id, status_code, duration_ms, error,"
                " response_body) VALUES ($1, $2, $3, $4, $5)",
                delivery_id, status, duration_ms, error, response)
            if outcome.kind is OutcomeKind.RETRY:
                await conn.execute(
                    "UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => $2),"
                    " last_status = $3, last_error = $4 WHERE id = $1",
                    delivery_id, outcome.delay, status, error)
            else:
                await conn.execute(
                    "UPDATE deliveries SET status = $2, finished_at = now(), last_status = $3,"
                    " last_error = $4 WHERE id = $1", delivery_id, outcome.kind.value, status,
                    error)
            if outcome.kind is OutcomeKind.CANCELLED or outcome.ours:
                return False
            disable_reason = outcome.disable_reason
            failing_since = await conn.fetchval(
                "UPDATE subscriptions SET failing_since = coalesce(failing_since, now())"
                " WHERE id = $1 RETURNING failing_since", subscription_id)
            if disable_reason is None and disable_after_s is not None and failing_since:
                too_long = await conn.fetchval(
                    "SELECT $1 <= now() - make_interval(secs => $2)", failing_since,
                    disable_after_s)
                if too_long:
                    disable_reason = "failing without a success since " + failing_since.isoformat()
            if disable_reason is None:
                return False
            result = await conn.execute(
                "UPDATE subscriptions SET enabled = false, disabled_reason = $2,"
                " updated_at = now() WHERE id = $1 AND enabled", subscription_id, disable_reason)
            disabled = result.endswith(" 1")
            if disabled and notice is not None:
                await _insert_delivery(conn, subscription_id, "notice", notice(disable_reason))
            return disabled

    async def delivered(self, rows: list[tuple[uuid.UUID, str, int, float, str | None]]) -> None:
        """Successful attempts (delivery, subscription, status, duration ms, response), in
        one transaction: under load, one round of statements for a few hundred."""
        # One statement, one round trip.
        await self.pool.execute(
            f"WITH {RELAXED}, a AS ("
            " INSERT INTO attempts (delivery_id, status_code, duration_ms, response_body)"
            " SELECT * FROM unnest($1::uuid[], $2::int[], $3::float8[], $4::text[])),"
            " d AS (UPDATE deliveries d SET status = 'delivered', finished_at = now(),"
            "  last_status = u.status, last_error = NULL"
            "  FROM unnest($1::uuid[], $2::int[]) AS u(id, status) WHERE d.id = u.id),"
            # A subscription's row is written only when there is news: most successes
            # follow others a moment ago.
            " s AS (UPDATE subscriptions SET last_success_at = now(), failing_since = NULL"
            "  WHERE id = ANY($5::text[]) AND (failing_since IS NOT NULL"
            "  OR last_success_at IS NULL OR last_success_at < now() - interval '1 minute'))"
            " SELECT count(*) FROM relaxed",
            [r[0] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
            [storable(r[4]) for r in rows], sorted({r[1] for r in rows}))

    async def deliveries(self, subscription_id: str, owner: str, status: str | None,
                         limit: int) -> list[DeliveryRecord]:
        return [_delivery_record_from_row(r) for r in await self.pool.fetch(
            "SELECT d.id, d.kind, d.status, d.item_count, d.attempts, d.created_at,"
            " d.finished_at, d.next_attempt_at, d.last_status, d.last_error,"
            " coalesce((SELECT json_agg(json_build_object('at', a.attempted_at,"
            "   'status_code', a.status_code, 'duration_ms', a.duration_ms, 'error', a.error,"
            "   'response_body', a.response_body) ORDER BY a.id)"
            "   FROM attempts a WHERE a.delivery_id = d.id), '[]') AS attempt_log"
            " FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
            " WHERE d.subscription_id = $1 AND s.owner = $2 AND ($3::text IS NULL"
            " OR d.status = $3) ORDER BY d.created_at DESC, d.id LIMIT $4",
            subscription_id, owner, status, limit)]

    async def retry(self, delivery_id: uuid.UUID, owner: str) -> Replayed | None:
        """A finished delivery back to pending, due now, with the same id (webhook-id)."""
        return await self._replay(
            "d.id = $1 AND s.owner = $2 AND d.status IN ('failed', 'cancelled')",
            delivery_id, owner)

    async def recover(self, subscription_id: str, owner: str,
                      since: datetime) -> list[Replayed]:
        return await self._replay_all(
            "d.subscription_id = $1 AND s.owner = $2 AND d.status IN ('failed', 'cancelled')"
            " AND d.kind = 'matches' AND d.created_at >= $3", subscription_id, owner, since)

    async def _replay(self, where: str, *args: Any) -> Replayed | None:
        rows = await self._replay_all(where, *args)
        return rows[0] if rows else None

    async def _replay_all(self, where: str, *args: Any) -> list[Replayed]:
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "UPDATE deliveries d SET status = 'pending', next_attempt_at = now(),"
                " attempts = 0, finished_at = NULL FROM subscriptions s"
                f" WHERE s.id = d.subscription_id AND {where} RETURNING d.id, d.status",
                *args)
            await conn.execute("SELECT pg_notify(current_schema() || '_work', 'deliveries')")
        return [Replayed(id=r["id"], status=r["status"]) for r in rows]

    # email addresses

    async def suppress(self, address: str, reason: str, days: float) -> None:
        """No mail to `address` for `days` (a refusal after an expired or lifted
        suppression starts a new one)."""
        await self.pool.execute(
            "INSERT INTO suppressed_addresses (address, reason, expires_at)"
            " VALUES (lower($1), $2, now() + make_interval(secs => $3::float8 * 86400))"
            " ON CONFLICT (address) DO UPDATE SET reason = excluded.reason,"
            " created_at = now(), expires_at = excluded.expires_at", address, reason, days)

    async def suppressed(self, address: str) -> bool:
        return bool(await self.pool.fetchval(
            "SELECT true FROM suppressed_addresses WHERE address = lower($1)"
            " AND expires_at > now()", address))

    async def unsuppress(self, address: str) -> bool:
        """Lift the suppression of `address`; False when none holds."""
        return bool(await self.pool.fetchval(
            "DELETE FROM suppressed_addresses WHERE address = lower($1)"
            " RETURNING expires_at > now()", address))

    async def contact_verified(self, subscription_id: str) -> bool:
        """Whether a subscription's contact address is one its recipient confirmed to the
        same owner (the verified address of an email subscription) and did not
        unsubscribe from since. The owner types a contact address; it may be anyone's."""
        return bool(await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM subscriptions s JOIN subscriptions e"
            " ON e.owner = s.owner AND e.address = lower(s.contact_email)"
            " WHERE s.id = $1 AND e.channel = 'email' AND e.verified"
            " AND e.disabled_reason IS DISTINCT FROM 'unsubscribed')", subscription_id))

    async def prune_messages(self, older_than_s: float) -> int:
        """Drop kept match messages no waiting item points into any more (their pairs are
        in their deliveries' bodies); returns how many."""
        result = await self.pool.execute(
            "DELETE FROM match_messages m WHERE m.created_at < now()"
            " - make_interval(secs => $1) AND NOT EXISTS (SELECT 1 FROM items i"
            " WHERE i.message_id = m.message_id AND i.delivery_id IS NULL)", older_than_s)
        return int(result.split()[-1])

    async def park(self, subject: str, stream_seq: int | None, reason: str,
                   data: bytes) -> None:
        await self.pool.execute(
            "INSERT INTO parked_messages (subject, stream_seq, reason, data, size)"
            " VALUES ($1, $2, $3, $4, $5)", subject, stream_seq, storable(reason),
            data[:PARKED_KEEP], len(data))

    async def prune_history(self, r: Retention) -> dict[str, int]:
        """Drop what is past its retention, a chunk of rows per statement (short locks,
        any number of notifiers at once): finished deliveries with their attempts; items
        already gathered into a delivery, but only once MATCHES can no longer bring their
        event again (their key is what makes a redelivered or replayed pair a no-op);
        items left waiting for a subscription disabled that long; parked messages.
        Returns the rows dropped per table."""
        statements = {
            "deliveries": (
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
                " WHERE status <> 'pending' AND finished_at < now() - make_interval(secs => $1)"
                " LIMIT $2 FOR UPDATE SKIP LOCKED)", r.deliveries_s),
            "items": (
                "DELETE FROM items WHERE (subscription_id, event_id) IN (SELECT i.subscription_id,"
                " i.event_id FROM items i JOIN subscriptions s ON s.id = i.subscription_id"
                " WHERE i.created_at < now() - make_interval(secs => $1)"
                " AND (i.delivery_id IS NOT NULL OR NOT s.enabled)"
                " LIMIT $2 FOR UPDATE OF i SKIP LOCKED)", r.items_s),
            "parked_messages": (
                "DELETE FROM parked_messages WHERE id IN (SELECT id FROM parked_messages"
                " WHERE parked_at < now() - make_interval(secs => $1) LIMIT $2)",
                r.deliveries_s),
        }
        dropped = dict.fromkeys(statements, 0)
        for table, (sql, age) in statements.items():
            while True:
                n = int((await self.pool.execute(sql, age, PRUNE_CHUNK)).split()[-1])
                dropped[table] += n
                if n < PRUNE_CHUNK:
                    break
        return dropped

    # operations

    async def backlog(self) -> tuple[int, float, int, int]:
        """(pending deliveries, age of the oldest in s, failed deliveries, disabled
        subscriptions)."""
        row = await self.pool.fetchrow(
            "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending') AS pending,"
            " (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)"
            "   FROM deliveries WHERE status = 'pending') AS oldest,"
            " (SELECT count(*) FROM deliveries WHERE status = 'failed') AS failed,"
            " (SELECT count(*) FROM subscriptions WHERE NOT enabled) AS disabled")
        return row["pending"], float(row["oldest"]), row["failed"], row["disabled"]


# The batches ready now ($1 max items, $2 max wait s, $3 deliveries to claim, $4 in flight;
# $5, $6, $7 the owners' room as in ROOM), their subscriptions and items locked; one row
# per batch, its items in order.
ASSEMBLE_WEBHOOKS = """
    WITH waiting AS (
        SELECT i.subscription_id, count(*) AS n,
               min(i.created_at) <= now() - make_interval(secs => $2) AS overdue
        FROM items i JOIN subscriptions s ON s.id = i.subscription_id
        WHERE i.delivery_id IS NULL AND s.enabled AND s.channel = 'webhook'
        GROUP BY i.subscription_id),
    ready AS (
        SELECT w.subscription_id, w.n,
               w.overdue OR (
                   SELECT count(*) FROM deliveries d
                   WHERE d.subscription_id = w.subscription_id
                   AND d.status = 'pending' AND d.kind = 'matches') < $4 AS flush
        FROM waiting w),
    chosen AS (
        SELECT * FROM ready WHERE n >= $1 OR flush LIMIT 2000),
    locked AS (
        SELECT s.id FROM subscriptions s JOIN chosen r ON r.subscription_id = s.id
        FOR UPDATE OF s SKIP LOCKED),
    -- Locking the items rechecks them against concurrent commits: another process that
    -- gathered them after this statement's snapshot was taken has set their delivery, and
    -- they drop out here instead of going out twice.
    claimed AS (
        SELECT i.subscription_id, i.event_id, i.payload, i.message_id, i.pair,
               i.occurred_at, i.created_at
        FROM items i JOIN locked l ON l.id = i.subscription_id
        WHERE i.delivery_id IS NULL
        FOR UPDATE OF i SKIP LOCKED),
    numbered AS (
        SELECT c.*, r.flush, count(*) OVER (PARTITION BY c.subscription_id) AS n,
               row_number() OVER (PARTITION BY c.subscription_id
                                  ORDER BY c.created_at, c.event_id) - 1 AS rn
        FROM claimed c JOIN chosen r ON r.subscription_id = c.subscription_id),
    grouped AS (
        SELECT subscription_id, chunk, count(*) AS k, min(occurred_at) AS oldest,
               array_agg(event_id ORDER BY rn) AS event_ids,
               array_agg(message_id ORDER BY rn) AS message_ids,
               array_agg(pair ORDER BY rn) AS pairs,
               array_agg(payload::text ORDER BY rn) AS payloads
        FROM (SELECT *, rn / $1 AS chunk FROM numbered) x
        WHERE chunk < n / $1 OR flush
        GROUP BY subscription_id, chunk),
    {room}
    -- a failing subscription's batches wait for claim(), which rations them
    SELECT g.*, s.failing_since IS NULL AND row_number() OVER (
               PARTITION BY s.failing_since IS NULL
               ORDER BY g.oldest, g.subscription_id, g.chunk) <= $3
           AND row_number() OVER (PARTITION BY s.owner
               ORDER BY g.oldest, g.subscription_id, g.chunk)
               <= coalesce(r.room, $7) AS claimed
    FROM grouped g JOIN subscriptions s ON s.id = g.subscription_id
    LEFT JOIN room r ON r.owner = s.owner
    """.replace("{room}", "room AS (SELECT * FROM unnest($5::text[], $6::int[]) AS o(owner, room))")


async def _changes(conn: asyncpg.Connection, decoded: messages.Decoded,
                   message_ids: list[str | None]) -> dict[str, dict[str, Any]]:
    """The match messages these items point into, decoded: those held, the rest read."""
    held, missing = decoded.take(message_ids)
    if missing:
        for r in await conn.fetch("SELECT message_id, body, encoding FROM match_messages"
                                  " WHERE message_id = ANY($1::text[])", missing):
            try:
                change = messages.decode_stored(bytes(r["body"]), r["encoding"])
            except ValueError as exc:  # left out: its items' batches wait, the rest go
                log.error("a kept match message cannot be read",
                          extra={"error": repr(exc)[:500]})
                continue
            held[r["message_id"]] = change
            decoded.put(r["message_id"], change)
    return held


def _delivery_from_row(row: asyncpg.Record) -> Delivery:
    """A row of ATTEMPT_FIELDS as the dispatcher takes it."""
    traces = row["trace_contexts"]
    return Delivery(
        id=row["id"], kind=row["kind"], body=row["body"], attempts=row["attempts"],
        item_count=row["item_count"], oldest_change_at=row["oldest_change_at"],
        trace_contexts=tuple(traces) if traces else None,
        subscription_id=row["subscription_id"], channel=row["channel"], url=row["url"],
        address=row["address"], contact_email=row["contact_email"], enabled=row["enabled"],
        verified=row["verified"], unsubscribe_token=row["unsubscribe_token"],
        digest=row["digest"], secret=row["secret"], previous_secret=row["previous_secret"],
        failing=row["failing"], owner=row["owner"])


def _subscription_from_row(row: asyncpg.Record) -> Subscription:
    """A row of SUBSCRIPTION_FIELDS."""
    return Subscription(
        id=row["id"], owner=row["owner"], channel=row["channel"], url=row["url"],
        address=row["address"], filter=row["filter"], digest=row["digest"],
        verified=row["verified"], enabled=row["enabled"],
        disabled_reason=row["disabled_reason"], contact_email=row["contact_email"],
        failing_since=row["failing_since"], last_success_at=row["last_success_at"],
        created_at=row["created_at"], updated_at=row["updated_at"],
        previous_until=row["previous_until"], suppressed_until=row["suppressed_until"])


def _linked_from_row(row: asyncpg.Record) -> LinkedSubscription:
    return LinkedSubscription(
        address=row["address"], filter=row["filter"], enabled=row["enabled"],
        verified=row["verified"], disabled_reason=row["disabled_reason"])


def _delivery_record_from_row(row: asyncpg.Record) -> DeliveryRecord:
    """A row of deliveries(); its attempt log comes as JSON text (json_agg)."""
    attempts = row["attempt_log"]
    return DeliveryRecord(
        id=row["id"], kind=row["kind"], status=row["status"], item_count=row["item_count"],
        attempts=row["attempts"], created_at=row["created_at"],
        finished_at=row["finished_at"], next_attempt_at=row["next_attempt_at"],
        last_status=row["last_status"], last_error=row["last_error"],
        attempt_log=tuple(_attempt_from_json(a) for a in (
            json.loads(attempts) if isinstance(attempts, str | bytes) else attempts)))


def _attempt_from_json(a: Mapping[str, Any]) -> Attempt:
    return Attempt(at=a["at"], status_code=a["status_code"],
                   duration_ms=a["duration_ms"], error=a["error"],
                   response_body=a["response_body"])


def _optional(build: Callable[[asyncpg.Record], _T], row: asyncpg.Record | None) -> _T | None:
    return None if row is None else build(row)


async def listen_routing(dsn: str, schema: str,
                         changed: Callable[[], None]) -> asyncpg.Connection:
    """A connection of its own on which `changed` is called once each routing change has
    committed (migration 005's NOTIFY), and when the connection is lost (changes may go
    unheard from then on). The caller closes it."""
    conn = await db.connect(dsn, schema)
    try:
        await conn.add_listener(f"{checked_schema(schema)}_subscriptions",
                                lambda *_: changed())
    except BaseException:
        await conn.close()
        raise
    conn.add_termination_listener(lambda _: changed())
    return conn


class ResealFailed(ValueError):
    """A stored secret of this subscription could not be opened to re-seal it; nothing was
    changed. The message is the cause's (a key id at most, never a secret)."""

    def __init__(self, subscription_id: str, cause: ValueError) -> None:
        self.subscription_id = subscription_id
        super().__init__(f"subscription {subscription_id}: {cause}")


class LimitReached(Exception):
    """The owner holds as many subscriptions as it may."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the limit of {limit} subscriptions is reached")
        self.limit = limit


async def _room_for_one_more(conn: asyncpg.Connection, owner: str, limit: int) -> None:
    """Raise LimitReached unless `owner` holds fewer than `limit` subscriptions. Its
    creations queue on a lock held to the end of the transaction, so two cannot both count
    the last place free (in this database's schema: other deployments beside it do not
    wait). The count is a statement of its own, after the lock: one statement's snapshot
    is taken before it waits, and would miss the creation it waited for."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()), hashtext($1))",
                       owner)
    held = await conn.fetchval("SELECT count(*) FROM subscriptions WHERE owner = $1", owner)
    if held >= limit:
        raise LimitReached(limit)


def _insert_items(first: int) -> str:
    """The INSERT of one chunk of items, from five arrays of parameters from $`first`."""
    arrays = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(
        ("text", "text", "text", "int", "timestamptz")))
    return ("INSERT INTO items (subscription_id, event_id, message_id, pair, occurred_at)"
            f" SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING RETURNING 1")


def _columns(rows: list[tuple[str, str, str, int, datetime | None]]) -> list[list[Any]]:
    """Rows as the five arrays _insert_items takes."""
    return [list(column) for column in zip(*rows, strict=True)]


# A commit that need not wait for the disk. Only for records whose loss in a database
# crash repeats an attempt under the same webhook-id (a claim, an attempt's result): never
# for items or the gathering of a delivery, whose loss would lose an alert or send one
# under a second identity. RELAXED is a CTE for one-statement transactions: set_config
# with is_local applies to the statement's own transaction, whose commit follows it.
RELAXED = "relaxed AS (SELECT set_config('synchronous_commit', 'off', true))"
# What each owner may still start in this process ($4 owners, $5 their room in claim()).
ROOM = "room AS (SELECT * FROM unnest($4::text[], $5::int[]) AS o(owner, room))"


async def _relaxed(conn: asyncpg.Connection) -> None:
    """The same for a transaction of several statements."""
    await conn.execute("SET LOCAL synchronous_commit TO off")


async def _insert_delivery(conn: asyncpg.Connection, subscription_id: str,
                           kind: messages.DeliveryKind, body: bytes,
                           delivery_id: uuid.UUID | None = None, *,
                           item_count: int = 0, oldest: datetime | None = None,
                           trace_contexts: str | None = None) -> uuid.UUID:
    """`trace_contexts`: as _joined makes them."""
    delivery_id = delivery_id or uuid.uuid4()
    await conn.execute(
        "INSERT INTO deliveries (id, subscription_id, kind, body, item_count, oldest_change_at,"
        " trace_contexts) VALUES ($1, $2, $3, $4, $5, $6, string_to_array($7, E'\\n'))",
        delivery_id, subscription_id, kind, body, item_count, oldest, trace_contexts)
    return delivery_id


# Trace contexts a delivery keeps at most: its attempts' spans link to each (the first is
# their parent); past a few dozen, links tell an operator nothing more.
TRACES_KEPT = 32


async def _trace_contexts(conn: asyncpg.Connection,
                          message_ids: list[str | None]) -> dict[str, str]:
    """The trace context kept with each of these match messages that has one."""
    rows = await conn.fetch(
        "SELECT message_id, trace_context FROM match_messages"
        " WHERE message_id = ANY($1::text[]) AND trace_context IS NOT NULL",
        list({m for m in message_ids if m is not None}))
    return {r["message_id"]: r["trace_context"] for r in rows}


def _joined(message_ids: list[str | None], traces: Mapping[str, str]) -> str | None:
    """The distinct trace contexts of a delivery's items, first item's first, one a line
    (none holds a line break); None when there are none."""
    if not traces:
        return None
    kept = list(dict.fromkeys(traces[m] for m in message_ids if m in traces))[:TRACES_KEPT]
    return "\n".join(kept) or None

