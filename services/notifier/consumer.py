"""MATCHES in, items out: each match event becomes one row per subscription that wants it.

A batch of events is routed and its items inserted in one transaction, then acked. What a
crash at each step leaves: before the commit, nothing (the events are redelivered); after
the commit and before the acks, the same items again, which the (subscription, event)
key drops. Several notifier processes share the durable consumer."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts.matches import MATCHES_STREAM
from services.common import nats as nats_util
from services.common.faults import crash_point
from services.notifier.metrics import NotifierMetrics
from services.notifier.store import Store
from services.notifier.subscriptions import Route, RoutingIndex

log = logging.getLogger(__name__)


class MatchConsumer:
    def __init__(self, nc: Client, store: Store, metrics: NotifierMetrics, *, durable: str,
                 replicas: int = 1, batch: int = 256) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.store, self.metrics = store, metrics
        self.durable, self.replicas, self.batch = durable, replicas, batch
        self.index = RoutingIndex()
        self._seen_changes = -1
        self.ready = asyncio.Event()

    async def start(self) -> None:
        await nats_util.ensure_stream(self.nc, nats_util.matches_stream(self.replicas))
        try:
            await self.js.consumer_info(MATCHES_STREAM, self.durable)
        except NotFoundError:
            # New subscriptions want what happens from now on, not a month of history.
            await self.js.add_consumer(MATCHES_STREAM, ConsumerConfig(
                durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=60,
                deliver_policy=DeliverPolicy.NEW, max_ack_pending=20_000))
        self.subscription = await self.js.pull_subscribe_bind(durable=self.durable,
                                                              stream=MATCHES_STREAM)
        await self.refresh()
        self.ready.set()

    async def refresh(self) -> None:
        """Reload the routing index when any subscription changed since the last look."""
        changes = await self.store.changes()
        if changes == self._seen_changes:
            return
        rows = await self.store.routable()
        self.index = RoutingIndex(Route.of(r["id"], r["filter"]) for r in rows)
        self._seen_changes = changes

    async def run(self) -> None:
        await nats_util.consume_batches(self.subscription, self.batch, self.handle,
                                        self._observe_lag)

    async def handle(self, msgs: list[Msg]) -> None:
        await self.refresh()
        rows: list[tuple[str, str, str, datetime | None]] = []
        for msg in msgs:
            try:
                event = orjson.loads(msg.data)
                wanted = self.index.route(event)
                event_id = str(event["event_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                log.error("unreadable match event skipped",
                          extra={"subject": msg.subject, "error": repr(exc)})
                continue
            occurred = _occurred_at(event)
            text = msg.data.decode()
            rows.extend((s, event_id, text, occurred) for s in wanted)
        added = await self.store.add_items(rows)
        crash_point("notifier.after_items")
        self.metrics.events.inc(len(msgs))
        self.metrics.items.inc(added)
        for msg in msgs:
            await msg.ack()

    async def _observe_lag(self) -> None:
        try:
            info = await self.js.consumer_info(MATCHES_STREAM, self.durable)
            self.metrics.consumer_pending.set(info.num_pending or 0)
        except Exception as exc:
            log.debug("consumer info failed", extra={"error": repr(exc)})


def _occurred_at(event: dict) -> datetime | None:
    cause = event.get("cause") or {}
    value = cause.get("occurred_at")
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
