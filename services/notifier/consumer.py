"""MATCHES in, items out: each pair of a match change becomes one row per subscription that
wants it.

A batch of messages (each a piece of one change's pairs) is routed and its items inserted
in one transaction, then acked. What a crash at each step leaves: before the commit,
nothing (the messages are redelivered); after the commit and before the acks, the same
items again, which the (subscription, event) key drops. Several notifier processes share
the durable consumer."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts import matches
from contracts.matches import MATCHES_MAX_BYTES, MATCHES_STREAM
from services.common import nats as nats_util
from services.common.faults import crash_point
from services.notifier.metrics import NotifierMetrics
from services.notifier.store import Store
from services.notifier.subscriptions import Route, RoutingIndex

log = logging.getLogger(__name__)


class MatchConsumer:
    def __init__(self, nc: Client, store: Store, metrics: NotifierMetrics, *, durable: str,
                 replicas: int = 1, batch: int = 256,
                 matches_max_bytes: int = MATCHES_MAX_BYTES) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.store, self.metrics = store, metrics
        self.durable, self.replicas, self.batch = durable, replicas, batch
        self.index = RoutingIndex()
        self._seen_changes = -1
        self.matches_max_bytes = matches_max_bytes
        self.ready = asyncio.Event()

    async def start(self) -> None:
        await nats_util.ensure_stream(self.nc, nats_util.matches_stream(
            self.replicas, self.matches_max_bytes))
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
        stored: list[tuple[str, bytes, str | None]] = []
        rows: list[tuple[str, str, str, int, datetime | None]] = []
        decoded = []
        for msg in msgs:
            try:
                change, items = self._items(msg)
            except Exception as exc:  # whatever a message holds, it cannot stop the rest
                log.error("unreadable match message skipped",
                          extra={"subject": msg.subject, "error": repr(exc)[:500]})
                continue
            if items:
                rows.extend(items)
                stored.append((items[0][2], msg.data,
                               (msg.headers or {}).get(matches.ENCODING_HEADER)))
                decoded.append((items[0][2], change))
        added = await self.store.add_items(stored, rows)
        crash_point("notifier.after_items")
        for message_id, change in decoded:  # its pairs are gathered soon: spare a decoding
            self.store.decoded.put(message_id, change)
        self.metrics.events.inc(len(msgs))
        self.metrics.items.inc(added)
        for msg in msgs:
            await msg.ack()

    def _items(self, msg: Msg,
               ) -> tuple[dict, list[tuple[str, str, str, int, datetime | None]]]:
        """The message decoded, and (subscription, event id, message id, pair, time of the
        change) for each of its pairs and each subscription that wants it."""
        change = matches.decode(msg.data, msg.headers)
        self.metrics.pairs.inc(len(change["found"]) + len(change["withdrawn"]))
        occurred = _occurred_at(change)
        message_id = str(change["message_id"])
        rows = []
        for n, pair, wanted in self.index.route_change(change):
            event_id = matches.match_event_id(pair.kind, pair.design_id, pair.design_version,
                                              pair.facility_id, pair.facility_version)
            rows.extend((s, event_id, message_id, n, occurred) for s in wanted)
        return change, rows

    async def _observe_lag(self) -> None:
        try:
            info = await self.js.consumer_info(MATCHES_STREAM, self.durable)
            self.metrics.consumer_pending.set(info.num_pending or 0)
        except Exception as exc:
            log.debug("consumer info failed", extra={"error": repr(exc)})


def _occurred_at(change: dict) -> datetime | None:
    """The cause's time, in UTC (as PostgreSQL will store it), or None."""
    value = (change.get("cause") or {}).get("occurred_at")
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
        return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None
