"""The outbox relay: publishes committed outbox rows to JetStream in order, marks each
published only after its PubAck.

What a crash at each step leaves:
- before publish: the row stays unpublished; the next relay publishes it.
- after PubAck, before marking: the next relay republishes it with the same Nats-Msg-Id,
  and JetStream's duplicate window drops the copy.
- NATS down: publishes fail, rows stay, the relay retries until NATS is back.
- An event that can never be published (larger than the NATS server's max_payload, or
  refused by JetStream for its size) is parked: moved to outbox_parked with the reason, and
  the rows after it go on. Later versions of the same entity may then be published past
  the parked one; REGISTRY keeps only the latest message per entity, and each event
  carries the whole entity, so consumers lose nothing but that one intermediate version.
Several registry processes may run a relay; a session advisory lock keeps one active,
and the others take over when its connection (and so its lock) goes away. The lock is a
lease: the server ends a session that said nothing for `lease_s` (a frozen or cut-off
leader) and probes the peer with TCP keepalives; the relay itself gives up a query not
answered within half the lease, talks to the database at least every third of it, and
publishes nothing once a lease may have lapsed unnoticed. So a leader lost to a half-open
connection is replaced within about `lease_s` seconds, not the hours TCP would take.
The leader also prunes published rows older than `retention_s`. Each publish is a span in
the trace of the write that queued it (its context kept in the outbox row), and the event
carries that span's `traceparent` to the matcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from nats.aio.client import Client
from nats.errors import MaxPayloadError
from nats.js.errors import APIError
from prometheus_client import CollectorRegistry, Counter, Gauge

from contracts.events import (
    REGISTRY_DUPLICATE_WINDOW_S,
    REGISTRY_STREAM,
    REGISTRY_SUBJECTS,
    design_partition_transform,
)
from services.common import db, tracing
from services.common import nats as nats_util
from services.common.faults import crash_point
from services.common.tasks import restarting
from services.registry.store import fetch_unpublished, mark_published, park, prune_published
from services.registry.writes import EVENT_HEADROOM_BYTES

log = logging.getLogger(__name__)
PARTITION_RECHECK_S = 10.0  # a relay refusing to publish looks again this often
T = TypeVar("T")
PUBLISH_TIMEOUT_S = 5.0
BATCH_GATHER_S = 0.005
PRUNE_EVERY_S = 60.0
PRUNE_SLICE = 10_000
# JetStream errors that the same message will get again on every attempt
# (10054: the message is larger than the stream's or the server's largest)
PERMANENT_JS_ERRORS = {10054}


class LeaseLapsed(Exception):
    """Too long passed since the relay last heard from the database: the lock may be
    another relay's by now, so this one publishes nothing more and starts over."""


def permanent_reason(exc: BaseException) -> str | None:
    """Why no retry of this publish can ever succeed; None when one may."""
    if isinstance(exc, MaxPayloadError):
        return "larger than the NATS server's max_payload"
    if isinstance(exc, APIError) and exc.err_code in PERMANENT_JS_ERRORS:
        return f"refused by JetStream: {exc.description} ({exc.err_code})"
    return None


def lease_settings(lease_s: float) -> dict[str, str]:
    """Server settings of the relay's connection that end its session, and so release
    its advisory lock, when the relay goes quiet or its peer vanishes for `lease_s`."""
    probe = max(1, int(lease_s / 3))
    return {"idle_session_timeout": str(int(lease_s * 1000)),
            "tcp_keepalives_idle": str(probe), "tcp_keepalives_interval": "1",
            "tcp_keepalives_count": "3", "tcp_user_timeout": str(int(lease_s * 1000))}


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter("makelocal_registry_events_published_total",
                                 "Outbox events acknowledged by JetStream", registry=registry)
        self.duplicates = Counter("makelocal_registry_events_duplicate_total",
                                  "Republished events JetStream recognised as duplicates",
                                  registry=registry)
        self.failures = Counter("makelocal_registry_publish_failures_total",
                                "Publish attempts that failed and will be retried",
                                registry=registry)
        self.active = Gauge("makelocal_registry_relay_active",
                            "1 when this process holds the relay lock", registry=registry)
        self.parked = Counter("makelocal_registry_outbox_parked",
                              "Outbox events that can never be published, moved to"
                              " outbox_parked", registry=registry)
        self.pruned = Counter("makelocal_registry_outbox_pruned",
                              "Published outbox rows deleted after the retention",
                              registry=registry)


def batch_of_distinct_subjects(rows: list[asyncpg.Record]) -> list[asyncpg.Record]:
    """The longest prefix with no subject twice: two versions of one entity never share a
    pipelined batch, so a partial failure cannot reorder them."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["subject"] in seen:
            break
        seen.add(row["subject"])
        out.append(row)
    return out


def publish_spans(rows: list[asyncpg.Record]) -> list[tracing.Span | None]:
    """A "publish" span per row, in the trace of the write that queued it (kept in the
    outbox: the write may have been another process's, long ago); None each when off."""
    if not tracing.enabled():
        return [None] * len(rows)
    return [tracing.start("publish", tracing.from_text(row["trace_context"]), tracing.PRODUCER,
                          {"messaging.system": "nats",
                           "messaging.destination.name": row["subject"],
                           "messaging.message.id": str(row["event_id"])})
            for row in rows]


class OutboxRelay:
    def __init__(self, *, dsn: str, schema: str, nats_url: str, metrics: RelayMetrics,
                 batch: int = 256, sweep_s: float = 1.0, replicas: int = 1,
                 partitions: int = 1, lease_s: float = 15.0, retention_s: float = 86400.0,
                 on_nats: Callable[[Client | None], None] | None = None) -> None:
        self.dsn, self.schema, self.nats_url = dsn, schema, nats_url
        self.metrics, self.batch, self.replicas = metrics, batch, replicas
        # The relay must talk to the database at least every third of the lease
        self.sweep_s = min(sweep_s, lease_s / 3)
        self.partitions, self.lease_s, self.retention_s = partitions, lease_s, retention_s
        self.publish_timeout_s = min(PUBLISH_TIMEOUT_S, lease_s / 3)
        self._db_heard = time.monotonic()
        self._next_prune = 0.0
        self.on_nats = on_nats or (lambda _nc: None)
        self._wake = asyncio.Event()
        # The one relay of this schema that publishes (or did last, while it restarts)
        self.holding_lock = False

    async def run(self) -> None:
        """Forever: wait for the lock, then publish; on any failure, start over."""
        await restarting(self._run_once, "relay", self.sweep_s,
                         lambda: self.metrics.active.set(0))

    async def _run_once(self) -> None:
        conn = await db.connect(self.dsn, self.schema, settings=lease_settings(self.lease_s),
                                command_timeout=self.lease_s / 2)
        nc: Client | None = None
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))",
                                          f"relay:{self.schema}"):
                self.holding_lock = False  # another instance publishes
                await asyncio.sleep(self.sweep_s)
            self._db_heard = time.monotonic()
            self.metrics.active.set(1)
            self.holding_lock = True
            await conn.add_listener(f"{self.schema}_outbox", self._notified)
            nc = await self._holding_lease(conn, self._connect_nats())
            while True:
                # Cleared before looking, not after: a commit notified while we look must
                # wake the next wait, not wait for the sweep.
                self._wake.clear()
                await self._prune_when_due(conn)
                published = await self._publish_some(conn, nc)
                if 0 < published < self.batch:
                    # Under load, commits arrive every few ms: gathering them for a moment
                    # turns many one-row rounds (fetch, publish, mark) into one.
                    await asyncio.sleep(BATCH_GATHER_S)
                elif published == 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.sweep_s)
                    except TimeoutError:
                        pass
        finally:
            self.metrics.active.set(0)
            self.on_nats(None)
            if nc is not None:
                await nc.close()
            # Bounded: a graceful close waits for the server, and a stalled connection
            # never answers (asyncpg aborts it when the time is up)
            with contextlib.suppress(Exception):
                await conn.close(timeout=self.lease_s / 2)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _holding_lease(self, conn: asyncpg.Connection, work: Awaitable[T]) -> T:
        """Await `work` (which does not use `conn`) while keeping the session, and so the
        lock, alive with a query every third of the lease."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.lease_s / 3)
                if done:
                    return task.result()
                await conn.fetchval("SELECT 1")
                self._db_heard = time.monotonic()
        finally:
            task.cancel()

    def _check_lease(self) -> None:
        """Called right before publishing: a process frozen (or a connection stalled) for
        half the lease since the database last answered may have lost the lock already,
        and a publish now could put an old version after the new leader's newer one."""
        if time.monotonic() - self._db_heard > self.lease_s / 2:
            raise LeaseLapsed(f"no word from the database for over {self.lease_s / 2:g} s")

    async def _prune_when_due(self, conn: asyncpg.Connection) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        pruned = await prune_published(conn, self.retention_s, PRUNE_SLICE)
        self.metrics.pruned.inc(pruned)
        # A full slice means more are due: the next round prunes again.
        self._next_prune = now if pruned == PRUNE_SLICE else now + min(PRUNE_EVERY_S,
                                                                          self.retention_s)

    async def _connect_nats(self) -> Client:
        while True:
            try:
                nc = await nats_util.connect(self.nats_url, f"registry-relay:{self.schema}")
                try:
                    # updating the stream would re-route design events under the matchers
                    await nats_util.check_partitions(nc.jetstream(), self.partitions,
                                                     "registry")
                except nats_util.PartitionMismatch as exc:
                    await nc.close()
                    log.error("relay refuses to publish", extra={"error": str(exc)})
                    await asyncio.sleep(PARTITION_RECHECK_S)
                    continue
                await nats_util.ensure_stream(nc, nats_util.compacted_stream(
                    REGISTRY_STREAM, [REGISTRY_SUBJECTS], REGISTRY_DUPLICATE_WINDOW_S,
                    self.replicas, design_partition_transform(self.partitions)))
                self.on_nats(nc)
                return nc
            except Exception as exc:
                log.warning("NATS unavailable; writes are kept in the outbox",
                            extra={"error": repr(exc)})
                await asyncio.sleep(self.sweep_s)

    async def _publish_some(self, conn: asyncpg.Connection, nc: Client) -> int:
        rows = batch_of_distinct_subjects(await fetch_unpublished(conn, self.batch))
        self._db_heard = time.monotonic()
        if not rows:
            return 0
        crash_point("relay.before_publish")
        # Checked before sending: nats-py checks the payload alone, the server headers and
        # payload together, and closes the connection of a client that sends too much.
        unfit = {row["position"]: "larger than the NATS server's max_payload"
                 for row in rows if len(row["payload"]) + EVENT_HEADROOM_BYTES > nc.max_payload}
        sendable = [row for row in rows if row["position"] not in unfit]
        js = nc.jetstream()
        spans: list[tracing.Span | None] = []
        try:
            self._check_lease()
            spans = publish_spans(sendable)
            futures = [
                await js.publish_async(row["subject"], bytes(row["payload"]),
                                       headers={"Nats-Msg-Id": str(row["event_id"]),
                                                **tracing.headers_of(span)})
                for row, span in zip(sendable, spans, strict=True)
            ]
            outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True),
                                              self.publish_timeout_s)
        except LeaseLapsed:
            raise
        except Exception as exc:
            for span in spans:
                tracing.end(span, exc)
            return await self._failed(exc, len(rows))
        for span, outcome in zip(spans, outcomes, strict=True):
            tracing.end(span, outcome if isinstance(outcome, BaseException) else None)
        acked, retry = [], []
        for row, outcome in zip(sendable, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                acked.append((row, outcome))
            elif (reason := permanent_reason(outcome)) is not None:
                unfit[row["position"]] = reason
            else:
                retry.append(outcome)
        if retry:
            # The batch is tried again whole: JetStream drops the copies of what went.
            return await self._failed(retry[0], len(rows))
        crash_point("relay.after_puback")
        for row in rows:
            if row["position"] in unfit:
                await self._park(conn, row, unfit[row["position"]])
        if acked:
            await mark_published(conn, [row["position"] for row, _ in acked])
        self.metrics.published.inc(len(acked))
        self.metrics.duplicates.inc(sum(1 for _, ack in acked if ack.duplicate))
        return len(rows)

    async def _failed(self, exc: BaseException, count: int) -> int:
        """A failure the next attempt may get past (NATS away, a timeout): wait, retry."""
        self.metrics.failures.inc()
        log.warning("publish failed; will retry", extra={"error": repr(exc), "count": count})
        await asyncio.sleep(min(self.sweep_s, 0.5))
        return 0

    async def _park(self, conn: asyncpg.Connection, row: asyncpg.Record, reason: str) -> None:
        await park(conn, row["position"], reason)
        self.metrics.parked.inc()
        log.error("an outbox event can never be published; parked in outbox_parked",
                  extra={"event_id": str(row["event_id"]), "subject": row["subject"],
                         "bytes": len(row["payload"]), "reason": reason})
