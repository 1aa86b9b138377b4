"""The outbox relay: publishes committed outbox rows to JetStream in order, marks each
published only after its PubAck.

What a crash at each step leaves:
- before publish: the row stays unpublished; the next relay publishes it.
- after PubAck, before marking: the next relay republishes it with the same Nats-Msg-Id,
  and JetStream's duplicate window drops the copy.
- NATS down: publishes fail, rows stay, the relay retries until NATS is back.
Several registry processes may run a relay; a session advisory lock keeps one active,
and the others take over when its connection (and so its lock) goes away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
from nats.aio.client import Client
from prometheus_client import CollectorRegistry, Counter, Gauge

from contracts.events import (
    REGISTRY_DUPLICATE_WINDOW_S,
    REGISTRY_STREAM,
    REGISTRY_SUBJECTS,
    design_partition_transform,
)
from services.common import db
from services.common import nats as nats_util
from services.common.faults import crash_point
from services.common.tasks import restarting
from services.registry.store import fetch_unpublished, mark_published

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT_S = 5.0
BATCH_GATHER_S = 0.005


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


class OutboxRelay:
    def __init__(self, *, dsn: str, schema: str, nats_url: str, metrics: RelayMetrics,
                 batch: int = 256, sweep_s: float = 1.0, replicas: int = 1,
                 partitions: int = 1,
                 on_nats: Callable[[Client | None], None] | None = None) -> None:
        self.dsn, self.schema, self.nats_url = dsn, schema, nats_url
        self.metrics, self.batch, self.sweep_s, self.replicas = metrics, batch, sweep_s, replicas
        self.partitions = partitions
        self.on_nats = on_nats or (lambda _nc: None)
        self._wake = asyncio.Event()
        # The one relay of this schema that publishes (or did last, while it restarts)
        self.holding_lock = False

    async def run(self) -> None:
        """Forever: wait for the lock, then publish; on any failure, start over."""
        await restarting(self._run_once, "relay", self.sweep_s,
                         lambda: self.metrics.active.set(0))

    async def _run_once(self) -> None:
        conn = await db.connect(self.dsn, self.schema)
        nc: Client | None = None
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))",
                                          f"relay:{self.schema}"):
                self.holding_lock = False  # another instance publishes
                await asyncio.sleep(self.sweep_s)
            self.metrics.active.set(1)
            self.holding_lock = True
            await conn.add_listener(f"{self.schema}_outbox", self._notified)
            nc = await self._connect_nats()
            while True:
                # Cleared before looking, not after: a commit notified while we look must
                # wake the next wait, not wait for the sweep.
                self._wake.clear()
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
            await conn.close()

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _connect_nats(self) -> Client:
        while True:
            try:
                nc = await nats_util.connect(self.nats_url, f"registry-relay:{self.schema}")
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
        if not rows:
            return 0
        crash_point("relay.before_publish")
        js = nc.jetstream()
        try:
            futures = [
                await js.publish_async(row["subject"], bytes(row["payload"]),
                                       headers={"Nats-Msg-Id": str(row["event_id"])})
                for row in rows
            ]
            acks = await asyncio.wait_for(asyncio.gather(*futures), PUBLISH_TIMEOUT_S)
        except Exception as exc:
            self.metrics.failures.inc()
            log.warning("publish failed; will retry", extra={"error": repr(exc),
                                                             "count": len(rows)})
            await asyncio.sleep(min(self.sweep_s, 0.5))
            return 0
        crash_point("relay.after_puback")
        await mark_published(conn, [row["position"] for row in rows])
        self.metrics.published.inc(len(rows))
        self.metrics.duplicates.inc(sum(1 for ack in acks if ack.duplicate))
        return len(rows)
