"""Wiring: settings -> database pool, store, relay, HTTP app. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fastapi import FastAPI
from nats.aio.client import Client
from prometheus_client import CollectorRegistry, Gauge

from contracts import asyncapi
from contracts.events import EntityKind
from services.common import logs, shell, tracing
from services.common import nats as nats_util
from services.common.auth import Authenticator, WriteLimit, key_owner
from services.common.partitions import refuse_other_partitions
from services.common.ratelimit import InFlight
from services.common.sandbox import ReaderPool
from services.registry import api, entities
from services.registry.relay import OutboxRelay, RelayMetrics
from services.registry.settings import RegistrySettings
from services.registry.store import Store
from services.registry.writes import event_limit


class PublisherStuck(Exception):
    """The relay leader has an event it has not published for too long."""


def create_app(settings: RegistrySettings | None = None) -> FastAPI:
    settings = settings or RegistrySettings()
    metrics = CollectorRegistry()
    relay_metrics = RelayMetrics(metrics)
    backlog = Gauge("makelocal_registry_outbox_backlog", "Outbox events not yet published",
                    registry=metrics)
    oldest = Gauge("makelocal_registry_outbox_oldest_age_seconds",
                   "Age of the oldest unpublished outbox event", registry=metrics)
    parked = Gauge("makelocal_registry_outbox_parked_rows",
                   "Outbox events that can never be published, kept in outbox_parked",
                   registry=metrics)
    state: dict[str, object] = {"nats": None, "relay": None}
    # The routes hold the store from the start; its pool is opened by the lifespan.
    store = Store(pool=None,  # type: ignore[arg-type]
                  max_event_bytes=settings.registry_max_event_bytes)

    def on_nats(nc: Client | None) -> None:
        state["nats"] = nc
        if nc is not None:
            learned_max_payload(nc.max_payload)

    def learned_max_payload(max_payload: int) -> None:
        store.max_event_bytes = event_limit(max_payload, settings.registry_max_event_bytes)

    async def learn_max_payload() -> None:
        """The largest event the NATS server takes, from its INFO: the API refuses larger
        ones. Until NATS answers, the default (1 MiB) or the configured limit stands."""
        while True:
            try:
                nc = await asyncio.wait_for(nats_util.connect(
                    settings.nats_url, "registry-api"), 5)
            except Exception:
                await asyncio.sleep(10)
                continue
            learned_max_payload(nc.max_payload)
            await nc.close()
            return

    async def observe_backlog() -> None:
        count, age, parked_rows = await store.outbox_backlog()
        backlog.set(count)
        oldest.set(age)
        parked.set(parked_rows)

    async def publish_outbox() -> None:
        relay = relay_of(settings, relay_metrics, on_nats)
        state["relay"] = relay
        await relay.run()

    limit = WriteLimit(settings.write_rate_per_s, settings.write_burst)
    in_flight = InFlight(settings.registry_writes_in_flight_per_key)

    async def owner_of(key: tuple[str, str]) -> str | None:
        return await key_owner(store.pool, "api_keys", key)  # the pool opens with the app

    # the write's transaction checks the key again: a short cache misses no revocation
    auth = Authenticator(owner_of, cache_s=settings.registry_auth_cache_s,
                         failures_per_min=settings.auth_failures_per_min)
    readers = ReaderPool(f"{entities.__name__}:{entities.prepare.__name__}",
                         size=settings.registry_readers, cpu_s=settings.registry_reader_cpu_s,
                         wall_s=settings.registry_reader_timeout_s,
                         memory_mb=settings.registry_reader_memory_mb)

    async def nats_ready() -> None:
        # Writes need only the database (the outbox keeps them); NATS matters to the one
        # instance whose relay publishes. A standby instance is ready without it.
        relay = state["relay"]
        if not isinstance(relay, OutboxRelay) or not relay.holding_lock:
            return
        nc = state["nats"]
        if not isinstance(nc, Client) or not nc.is_connected:
            raise ConnectionError("NATS not connected")

    async def publishing() -> None:
        # The leader's own question: is it getting events out? (Writes still work, so
        # the standbys stay ready; the MakelocalOutboxStale alert watches the rest.)
        relay = state["relay"]
        if not isinstance(relay, OutboxRelay) or not relay.holding_lock:
            return
        age = await store.oldest_unpublished_age()
        if age > settings.registry_outbox_stale_s:
            raise PublisherStuck(f"an event has waited {age:.0f} s")

    return shell.build(shell.Service(
        name="registry", metrics=metrics, max_body_bytes=settings.max_body_bytes,
        description="OKH designs and OKW facilities; every change is an event on the "
                    "REGISTRY stream.",
        routers=[*(api.router(kind, store, limit, auth, readers, in_flight,
                              settings.registry_body_timeout_s) for kind in EntityKind),
                 api.validation_router(auth, readers, settings.registry_body_timeout_s)],
        checks={"nats": nats_ready, "publishing": publishing},
        asyncapi=asyncapi.document("registry", settings.nats_url),
        database=shell.Database(settings.database_url, settings.registry_db_schema,
                                "services.registry", settings.registry_db_pool_size, store),
        # A moment for NATS to tell the limit before the first write is taken
        tasks=[shell.Every(2.0, observe_backlog), shell.Once(learn_max_payload, wait_s=3),
               *([shell.Once(publish_outbox)] if settings.registry_relay else [])],
        stopping=[readers.close], state={"store": store}))


def main() -> None:
    import uvicorn

    settings = RegistrySettings()
    logs.configure("registry", settings.log_level)
    tracing.configure("makelocal-registry")
    refuse_other_partitions(settings.nats_url, settings.partitions, "registry")
    # Several worker processes share the port; each runs a relay, and the advisory lock
    # keeps exactly one of them publishing.
    uvicorn.run("services.registry.app:create_app", factory=True, host=settings.host,
                port=settings.registry_port, workers=settings.registry_workers,
                log_config=None, access_log=False)


def main_relay() -> None:
    """The outbox relay alone, for deployments that run it apart from the API."""
    settings = RegistrySettings()
    logs.configure("registry-relay", settings.log_level)
    tracing.configure("makelocal-registry")
    refuse_other_partitions(settings.nats_url, settings.partitions, "registry-relay")
    relay = relay_of(settings, RelayMetrics(CollectorRegistry()))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(relay.run())


def relay_of(settings: RegistrySettings, metrics: RelayMetrics,
             on_nats: Callable[[Client | None], None] | None = None) -> OutboxRelay:
    return OutboxRelay(
        dsn=settings.database_url, schema=settings.registry_db_schema,
        nats_url=settings.nats_url, metrics=metrics,
        batch=settings.registry_relay_batch, sweep_s=settings.registry_relay_sweep_s,
        replicas=settings.registry_stream_replicas, partitions=settings.partitions,
        lease_s=settings.registry_relay_lease_s,
        retention_s=settings.registry_outbox_retention_s, on_nats=on_nats)
