"""MATCHES in, items out: each pair of a match change becomes one row per subscription that
wants it.

A batch of messages (each a piece of one change's pairs) is routed and its items inserted
in one transaction, then acked. What a crash at each step leaves: before the commit,
nothing (the messages are redelivered); after the commit and before the acks, the same
items again, which the (subscription, event) key drops. Several notifier processes share
the durable consumer.

Every match made after a subscription's creation, re-enabling or confirmation committed
reaches it, whichever notifier consumes the match and whichever took the change. A trigger
bumps the routing version in every transaction that changes what routing reads
(migration 005), so the version is seen only with the change. Before routing a batch the
consumer reads the committed version and, when it is not the one its index was loaded at,
reloads (subscriptions and version in one snapshot). A match made after the commit was
fetched after it, so the check that follows the fetch sees the change. Matches made
before it may reach it or not; none made after a disabling committed is routed to it.

The NOTIFY the trigger sends is delivered at commit: the index is reloaded then, not on
the next batch's path. A full reload every `reload_s` catches what no version counted
(rows changed with triggers off, as a restore may).

When traced, each message is routed in a span child of its traceparent (the matcher's),
and its match_messages row keeps that span's context for the deliveries made from it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts import matches
from contracts.matches import MATCHES_DUPLICATE_WINDOW_S, MATCHES_MAX_BYTES, MATCHES_STREAM
from services.common import nats as nats_util
from services.common import tracing
from services.common.faults import crash_point
from services.common.tasks import restarting
from services.notifier.metrics import NotifierMetrics
from services.notifier.store import Store
from services.notifier.subscriptions import Route, RoutingIndex

log = logging.getLogger(__name__)


# Opens a connection on which the callback is called after each routing change commits
# (store.listen_routing).
Listen = Callable[[Callable[[], None]], Awaitable[asyncpg.Connection]]


class MatchConsumer:
    def __init__(self, nc: Client, store: Store, metrics: NotifierMetrics, *, durable: str,
                 replicas: int = 1, batch: int = 256,
                 matches_max_bytes: int = MATCHES_MAX_BYTES,
                 matches_duplicate_window_s: float = MATCHES_DUPLICATE_WINDOW_S,
                 listen: Listen | None = None,
                 reload_s: float = 30.0) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.store, self.metrics = store, metrics
        self.durable, self.replicas, self.batch = durable, replicas, batch
        self.index = RoutingIndex()
        self._version: int | None = None  # the routing version the index was loaded at
        self._filters: Mapping[str, Any] = {}  # what the index holds: id -> filter
        self._reloading = asyncio.Lock()
        self._changed = asyncio.Event()
        self.listen, self.reload_s = listen, reload_s
        self.matches_max_bytes = matches_max_bytes
        self.matches_duplicate_window_s = matches_duplicate_window_s
        self.ready = asyncio.Event()

    async def start(self) -> None:
        await nats_util.ensure_stream(self.nc, nats_util.matches_stream(
            self.replicas, self.matches_max_bytes, self.matches_duplicate_window_s))
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

    async def refresh(self, *, full: bool = False) -> None:
        """Bring the routing index to the subscriptions as committed now: reload when the
        routing version moved since it was loaded, or always when `full`."""
        async with self._reloading:  # one reload at a time; a batch waits for it
            if not full and await self.store.routing_version() == self._version:
                return
            version, filters = await self.store.routable()
            # only what changed is filed anew: making Routes is most of a reload's cost
            for gone in self._filters.keys() - filters.keys():
                self.index.discard(gone)
            for subscription_id, f in filters.items():
                if self._filters.get(subscription_id) == f:
                    continue
                try:
                    self.index.add(Route.of(subscription_id, f))
                except ValueError as exc:  # (a process the vocabulary no longer has)
                    self.index.discard(subscription_id)
                    log.error("a subscription's filter cannot be read; nothing is routed"
                              " to it", extra={"error": f"{subscription_id}: {exc!r}"[:500]})
            self._filters, self._version = filters, version

    async def run(self) -> None:
        watching = asyncio.create_task(restarting(self._watch, "routing watch", 1.0))
        try:
            await nats_util.consume_batches(self.subscription, self.batch, self.handle,
                                            self._observe_lag)
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching

    async def _watch(self) -> None:
        """Reload when a routing change commits, and in full every `reload_s`; until the
        listening connection is lost (then restarting() opens another)."""
        conn = await self.listen(self._changed.set) if self.listen else None
        try:
            await self.refresh()  # what changed while nobody listened
            while conn is None or not conn.is_closed():
                try:
                    await asyncio.wait_for(self._changed.wait(), self.reload_s)
                except TimeoutError:
                    await self.refresh(full=True)
                    continue
                self._changed.clear()
                await self.refresh()
        finally:
            if conn is not None:
                await conn.close()

    async def handle(self, msgs: list[Msg]) -> None:
        await self.refresh()
        stored: list[tuple[str, bytes, str | None]] = []
        rows: list[tuple[str, str, str, int, datetime | None]] = []
        decoded = []
        traces: dict[str, str] = {}  # message id -> its span's context, for its deliveries
        traced = tracing.enabled()  # off: no span machinery per message
        for msg in msgs:
            span = tracing.start("route", tracing.from_headers(msg.headers),
                                 tracing.CONSUMER) if traced else None
            try:
                change, items = self._items(msg)
            except Exception as exc:  # whatever a message holds, it cannot stop the rest
                tracing.end(span, exc)
                await self._park(msg, exc)
                continue
            trace_context = tracing.to_text(span)
            tracing.end(span)
            if items:
                rows.extend(items)
                stored.append((items[0][2], msg.data,
                               (msg.headers or {}).get(matches.ENCODING_HEADER)))
                decoded.append((items[0][2], change))
                if trace_context is not None:
                    traces[items[0][2]] = trace_context
        added = await self.store.add_items(stored, rows, traces)
        crash_point("notifier.after_items")
        for message_id, change in decoded:  # its pairs are gathered soon: spare a decoding
            self.store.decoded.put(message_id, change)
        self.metrics.events.inc(len(msgs))
        self.metrics.items.inc(added)
        for msg in msgs:
            await msg.ack()

    async def _park(self, msg: Msg, exc: Exception) -> None:
        """An unreadable message is kept (parked_messages) and acked with the rest: never
        redelivered in a loop, never holding up the stream."""
        try:
            seq: int | None = msg.metadata.sequence.stream
        except Exception:  # not a JetStream message (a test publishing on a subject)
            seq = None
        reason = f"{type(exc).__name__}: {exc}"[:500]
        await self.store.park(msg.subject, seq, reason, msg.data)
        self.metrics.parked.inc()
        log.error("unreadable match message parked",
                  extra={"subject": msg.subject, "seq": seq, "error": reason})

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
