"""`makelocal trace EVENT_ID`: one registry change followed to the match events it caused
(read from MATCHES, from the change's time on) and the deliveries that carried them."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import asyncpg
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts import matches
from contracts.matches import MATCHES_STREAM, MATCHES_SUBJECTS
from services.common import nats as nats_util


async def registry_change(conn: asyncpg.Connection, schema: str,
                          event_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT subject, entity_id, version, created_at, published_at FROM "
        f"{_quoted(schema)}.outbox WHERE event_id::text = $1", event_id)
    return dict(row) if row else None


async def match_events(nats_url: str, event_id: str, since: Any, limit: int,
                       subject: str = MATCHES_SUBJECTS) -> list[dict]:
    """The pairs of the match change this registry change caused, scanning MATCHES (the
    changed entity's subject, when known) from its time (bounded)."""
    nc = await nats_util.connect(nats_url, "makelocal-trace")
    found: list[dict] = []
    try:
        js = nc.jetstream()
        info = await js.stream_info(MATCHES_STREAM)
        last = info.state.last_seq
        if not info.state.messages:
            return found
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        if since is not None:  # a match event is never older than its cause
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                    opt_start_time=since.astimezone(UTC).isoformat())
        sub = await js.subscribe(subject, stream=MATCHES_STREAM, ordered_consumer=True,
                                 config=config)
        try:
            for _ in range(limit):
                try:
                    msg = await sub.next_msg(timeout=2)
                except TimeoutError:
                    break
                try:
                    change = matches.decode(msg.data, msg.headers)
                except ValueError:
                    continue  # not a match change (an older schema): not this one's
                if (change.get("cause") or {}).get("event_id") == event_id:
                    found.extend(matches.match_events(change))
                if msg.metadata.sequence.stream >= last or not msg.metadata.num_pending:
                    break
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return found


@dataclass(frozen=True, slots=True)
class Carried:
    """A match event as one subscription took it, and the delivery carrying it: none
    while it waits to be gathered into one."""

    event_id: str
    channel: str
    delivery_id: uuid.UUID | None
    status: str | None
    attempts: int | None


async def deliveries(conn: asyncpg.Connection, schema: str,
                     match_ids: list[str]) -> list[Carried]:
    s = _quoted(schema)
    rows = await conn.fetch(
        "SELECT i.event_id, d.id, s.channel, d.status, d.attempts, d.finished_at "
        f"FROM {s}.items i JOIN {s}.subscriptions s ON s.id = i.subscription_id "
        f"LEFT JOIN {s}.deliveries d ON d.id = i.delivery_id "
        "WHERE i.event_id = ANY($1::text[]) ORDER BY i.event_id, d.created_at", match_ids)
    return [Carried(event_id=r["event_id"], channel=r["channel"], delivery_id=r["id"],
                    status=r["status"], attempts=r["attempts"]) for r in rows]


def _quoted(schema: str) -> str:
    return '"' + schema.replace('"', '""') + '"'


async def trace(database_url: str, nats_url: str, event_id: str, *, registry_schema: str,
                notifier_schema: str, limit: int = 1_000_000) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        change = await registry_change(conn, registry_schema, event_id)
        lines = []
        if change is None:
            lines.append(f"registry change {event_id}: not in the outbox (unknown, or pruned)")
        else:
            lines.append(f"registry change {event_id}: {change['subject']} {change['entity_id']}"
                         f" v{change['version']} at {change['created_at']:%Y-%m-%d %H:%M:%S},"
                         f" published {change['published_at'] or 'not yet'}")
        subject = MATCHES_SUBJECTS
        if change is not None:  # registry.<kind>.[<partition>.]<id>
            subject = matches.change_subject(change["subject"].split(".")[1],
                                             change["entity_id"])
        events = await match_events(nats_url, event_id, change and change["created_at"], limit,
                                    subject)
        lines.append(f"match events: {len(events)}")
        sent: dict[str, list[Carried]] = {}
        for carried in await deliveries(conn, notifier_schema,
                                        [e["event_id"] for e in events]):
            sent.setdefault(carried.event_id, []).append(carried)
        for e in events:
            lines.append(f"  {e['type']} {e['event_id']} design {e['design_id']} "
                         f"v{e['design_version']} facility {e['facility_id']} "
                         f"v{e['facility_version']} score {e['score']:.2f}")
            for d in sent.get(e["event_id"], []):
                lines.append(f"    {d.channel} delivery {d.delivery_id or '(gathering)'}: "
                             f"{d.status or 'waiting'}, {d.attempts or 0} attempts")
        return "\n".join(lines)
    finally:
        await conn.close()


def run(database_url: str, nats_url: str, event_id: str) -> int:
    from services.notifier.settings import NotifierSettings
    from services.registry.settings import RegistrySettings

    print(asyncio.run(trace(database_url, nats_url, event_id,
                            registry_schema=RegistrySettings().registry_db_schema,
                            notifier_schema=NotifierSettings().notifier_db_schema)))
    return 0
