"""Wiring: settings -> database pool, store, relay, HTTP app. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from nats.aio.client import Client
from prometheus_client import CollectorRegistry, Gauge

from contracts import asyncapi
from contracts.events import EntityKind
from services.common import db, logs
from services.common.http import (
    BodyLimit,
    HttpMetrics,
    WriteLimit,
    install_error_handlers,
    install_operational_routes,
)
from services.common.tasks import every
from services.registry import api
from services.registry.relay import OutboxRelay, RelayMetrics
from services.registry.settings import RegistrySettings
from services.registry.store import Store


def create_app(settings: RegistrySettings | None = None) -> FastAPI:
    settings = settings or RegistrySettings()
    metrics = CollectorRegistry()
    relay_metrics = RelayMetrics(metrics)
    backlog = Gauge("makelocal_registry_outbox_backlog", "Outbox events not yet published",
                    registry=metrics)
    oldest = Gauge("makelocal_registry_outbox_oldest_age_seconds",
                   "Age of the oldest unpublished outbox event", registry=metrics)
    state: dict[str, object] = {"nats": None, "relay": None}
    # The routes hold the store from the start; its pool is opened by the lifespan.
    store = Store(pool=None)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.migrate(settings.database_url, settings.registry_db_schema,
                         "services.registry")
        pool = await db.create_pool(settings.database_url, settings.registry_db_schema,
                                    max_size=settings.registry_db_pool_size)
        store.pool = pool
        async def observe_backlog() -> None:
            count, age = await store.outbox_backlog()
            backlog.set(count)
            oldest.set(age)

        tasks = [asyncio.create_task(every(2.0, observe_backlog))]
        if settings.registry_relay:
            relay = OutboxRelay(
                dsn=settings.database_url, schema=settings.registry_db_schema,
                nats_url=settings.nats_url, metrics=relay_metrics,
                batch=settings.registry_relay_batch, sweep_s=settings.registry_relay_sweep_s,
                replicas=settings.registry_stream_replicas, partitions=settings.partitions,
                on_nats=lambda nc: state.__setitem__("nats", nc))
            state["relay"] = relay
            tasks.append(asyncio.create_task(relay.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pool.close()

    app = FastAPI(title="makelocal registry", version="1",
                  description="OKH designs and OKW facilities; every change is an event on "
                              "the REGISTRY stream.", lifespan=lifespan)

    limit = WriteLimit(settings.write_rate_per_s, settings.write_burst)
    for kind in EntityKind:
        app.include_router(api.router(kind, store, limit))
    app.state.store = store

    async def database_ready() -> None:
        await store.pool.fetchval("SELECT 1")

    async def nats_ready() -> None:
        # Writes need only the database (the outbox keeps them); NATS matters to the one
        # instance whose relay publishes. A standby instance is ready without it.
        relay = state["relay"]
        if not isinstance(relay, OutboxRelay) or not relay.holding_lock:
            return
        nc = state["nats"]
        if not isinstance(nc, Client) or not nc.is_connected:
            raise ConnectionError("NATS not connected")

    install_error_handlers(app)
    install_operational_routes(app, metrics, {"database": database_ready, "nats": nats_ready},
                               asyncapi.document("registry", settings.nats_url))
    app.add_middleware(HttpMetrics, registry=metrics, prefix="makelocal_registry")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app



def main() -> None:
    import uvicorn

    settings = RegistrySettings()
    logs.configure("registry", settings.log_level)
    # Several worker processes share the port; each runs a relay, and the advisory lock
    # keeps exactly one of them publishing.
    uvicorn.run("services.registry.app:create_app", factory=True, host=settings.host,
                port=settings.registry_port, workers=settings.registry_workers,
                log_config=None, access_log=False)


def main_relay() -> None:
    """The outbox relay alone, for deployments that run it apart from the API."""
    settings = RegistrySettings()
    logs.configure("registry-relay", settings.log_level)
    relay = OutboxRelay(
        dsn=settings.database_url, schema=settings.registry_db_schema,
        nats_url=settings.nats_url, metrics=RelayMetrics(CollectorRegistry()),
        batch=settings.registry_relay_batch, sweep_s=settings.registry_relay_sweep_s,
        replicas=settings.registry_stream_replicas, partitions=settings.partitions)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(relay.run())
