"""Wiring: settings -> database pool, store, MATCHES consumer, dispatcher, HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from contracts import asyncapi
from services.common import collector, db, logs
from services.common import nats as nats_util
from services.common.auth import Authenticator, KeyBeforeBody
from services.common.http import (
    BodyLimit,
    HttpMetrics,
    WriteLimit,
    install_docs,
    install_error_handlers,
    install_operational_routes,
)
from services.common.tasks import every, restarting
from services.notifier import api
from services.notifier.consumer import MatchConsumer
from services.notifier.dispatch import Dispatcher
from services.notifier.guard import Guard, Resolver, system_resolver
from services.notifier.metrics import NotifierMetrics
from services.notifier.settings import NotifierSettings
from services.notifier.store import Store, listen_routing

# at shutdown, how long the pool may wait for its connections to come back
SHUTDOWN_WAIT_S = 5.0


def create_app(settings: NotifierSettings | None = None,
               resolver: Resolver = system_resolver) -> FastAPI:
    settings = settings or NotifierSettings()
    registry = CollectorRegistry()
    metrics = NotifierMetrics(registry)
    guard = Guard(settings.allowed_networks, resolver, metrics.ssrf_blocked.inc)
    store = Store(pool=None, keys_schema=settings.notifier_keys_schema,  # type: ignore[arg-type]
                  on_render_failure=metrics.render_failures.inc)
    state: dict[str, MatchConsumer | None] = {"consumer": None}

    async def consume() -> None:
        """One life of the consumer; after a failure the next reconnects and goes on
        (unacked events are redelivered)."""
        nc = await nats_util.connect(settings.nats_url, "notifier")
        try:
            consumer = MatchConsumer(nc, store, metrics, durable=settings.notifier_durable,
                                     replicas=settings.notifier_stream_replicas,
                                     matches_max_bytes=settings.matches_max_bytes,
                                   matches_duplicate_window_s=settings.matches_duplicate_window_s,
                                     listen=functools.partial(
                                         listen_routing, settings.database_url,
                                         settings.notifier_db_schema),
                                     reload_s=settings.notifier_reload_s)
            await consumer.start()
            state["consumer"] = consumer
            await consumer.run()
        finally:
            await nc.close()

    def forget_consumer() -> None:
        state["consumer"] = None

    async def prune() -> None:
        for table, n in (await store.prune_history(settings.retention)).items():
            metrics.pruned.labels(table).inc(n)

    async def observe_backlog() -> None:
        pending, oldest, dead, disabled = await store.backlog()
        metrics.pending.set(pending)
        metrics.oldest_pending.set(oldest)
        metrics.dead.set(dead)
        metrics.disabled.set(disabled)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        collector.collect_less_often()  # it keeps decoded changes of thousands of pairs
        await db.migrate(settings.database_url, settings.notifier_db_schema, "services.notifier")
        store.pool = await db.create_pool(settings.database_url, settings.notifier_db_schema,
                                          max_size=20)
        dispatcher = Dispatcher(store, settings, guard, metrics)
        tasks = [asyncio.create_task(restarting(consume, "consumer", 1.0, forget_consumer)),
                 asyncio.create_task(dispatcher.run()),
                 asyncio.create_task(every(2.0, observe_backlog)),
                 asyncio.create_task(every(settings.notifier_prune_every_s, prune))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:  # graceful: waits for every connection to come back
                await asyncio.wait_for(store.pool.close(), SHUTDOWN_WAIT_S)
            except TimeoutError:  # one still held: shutting down must not hang on it
                store.pool.terminate()

    app = FastAPI(title="makelocal notifier", version="1", docs_url=None, redoc_url=None,
                  lifespan=lifespan,
                  description="Match alerts by signed webhook (Standard Webhooks) and email.")

    async def database_ready() -> None:
        await store.pool.fetchval("SELECT 1")

    async def consuming() -> None:
        consumer = state["consumer"]
        if consumer is None or not consumer.ready.is_set() or not consumer.nc.is_connected:
            raise ConnectionError("not consuming MATCHES")

    checks: dict[str, Callable[[], Awaitable[None]]] = {"database": database_ready,
                                                        "nats": consuming}
    # no cache of verified keys: this is the only check, a revocation must hold at once
    keyed = Authenticator(store.owner_of, cache_s=0,
                          failures_per_min=settings.auth_failures_per_min)
    app.include_router(api.router(store, guard, settings,
                                  WriteLimit(settings.write_rate_per_s, settings.write_burst),
                                  keyed))
    api.webhooks(app.webhooks)
    install_error_handlers(app)
    install_docs(app)
    install_operational_routes(app, registry, checks,
                               asyncapi.document("notifier", settings.nats_url))
    # the key before the body (FastAPI's parsing is inside it), refusals counted
    app.add_middleware(KeyBeforeBody, auth=keyed, prefix="/v1/subscriptions")
    app.add_middleware(HttpMetrics, registry=registry, prefix="makelocal_notifier")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.state.store = store
    return app



def main() -> None:
    import uvicorn

    settings = NotifierSettings()
    logs.configure("notifier", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.notifier_port,
                log_config=None, access_log=False)
