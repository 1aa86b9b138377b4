"""Wiring: settings -> database pool, store, MATCHES consumer, dispatcher, HTTP app."""

from __future__ import annotations

import functools

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware

from contracts import asyncapi
from services.common import collector, logs, shell, tracing
from services.common import nats as nats_util
from services.common.auth import Authenticator, KeyBeforeBody, WriteLimit
from services.notifier import api, webhooks
from services.notifier.consumer import MatchConsumer
from services.notifier.dispatch import Dispatcher
from services.notifier.guard import Guard, Resolver, system_resolver
from services.notifier.metrics import NotifierMetrics
from services.notifier.settings import NotifierSettings
from services.notifier.store import Store, listen_routing


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
                                     matches_duplicate_window_s=(
                                         settings.matches_duplicate_window_s),
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

    async def fewer_collections() -> None:
        collector.collect_less_often()  # it keeps decoded changes of thousands of pairs

    async def dispatch() -> None:
        await Dispatcher(store, settings, guard, metrics).run()

    async def consuming() -> None:
        consumer = state["consumer"]
        if consumer is None or not consumer.ready.is_set() or not consumer.nc.is_connected:
            raise ConnectionError("not consuming MATCHES")

    # no cache of verified keys: this is the only check, a revocation must hold at once
    keyed = Authenticator(store.owner_of, cache_s=0,
                          failures_per_min=settings.auth_failures_per_min)
    context = api.Context(store, guard, settings,
                          WriteLimit(settings.write_rate_per_s, settings.write_burst), keyed)
    return shell.build(shell.Service(
        name="notifier", metrics=registry, max_body_bytes=settings.max_body_bytes,
        description="Match alerts by signed webhook (Standard Webhooks) and email.",
        routers=[api.router], webhooks=webhooks.router,
        checks={"nats": consuming},
        asyncapi=asyncapi.document("notifier", settings.nats_url),
        starting=[fewer_collections],
        database=shell.Database(settings.database_url, settings.notifier_db_schema,
                                "services.notifier", 20, store),
        tasks=[shell.Restarting("consumer", consume, 1.0, forget_consumer),
               shell.Once(dispatch), shell.Every(2.0, observe_backlog),
               shell.Every(settings.notifier_prune_every_s, prune)],
        # the key before the body (FastAPI's parsing is inside it), refusals counted
        middleware=[Middleware(KeyBeforeBody, auth=keyed, prefix="/v1/subscriptions")],
        state={"store": store, "context": context}))


def main() -> None:
    import uvicorn

    settings = NotifierSettings()
    logs.configure("notifier", settings.log_level)
    tracing.configure("makelocal-notifier")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.notifier_port,
                log_config=None, access_log=False)
