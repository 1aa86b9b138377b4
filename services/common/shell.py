"""One shell for every service's HTTP app: a service says what it has (a `Service`), and
`build` makes its FastAPI app with one lifespan.

The lifespan, step by step, and what a crash at each leaves:
1. the service's `starting` steps (a warm-up): nothing of ours written;
2. its database migrated (each migration in its own transaction, under an advisory lock):
   the schema as of the last migration applied, the next start goes on from there;
3. the pool opened and handed to its store;
4. its background tasks started in order, each waiting up to its `wait_s` for a value
   later ones need; they keep their own state (outbox, checkpoints, deliveries), a crash
   leaves it as their own docstrings say;
5. serving; at shutdown the tasks are cancelled, the `stopping` steps run, and the pool
   closes, waiting a bounded time for its connections (never hanging on one held).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from services.common import db, tracing
from services.common.docs import install_docs
from services.common.errors import install_error_handlers
from services.common.health import Check, install_operational_routes
from services.common.middleware import BodyLimit, HttpMetrics
from services.common.tasks import every, restarting

# at shutdown, how long a pool may wait for its connections to come back
SHUTDOWN_WAIT_S = 5.0

Step = Callable[[], Awaitable[None]]
Work = Callable[[], Coroutine[Any, Any, None]]


class Pooled(Protocol):
    """A store whose pool the lifespan opens (the routes hold the store from the start)."""

    pool: asyncpg.Pool


@dataclass(frozen=True)
class Database:
    """The service's PostgreSQL schema: migrated from `package`'s migrations/ at start."""

    url: str
    schema: str
    package: str
    pool_size: int
    store: Pooled


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Restarting:
    """Work that runs until cancelled: after a failure, logged, `on_error`, then `delay`
    seconds and again."""

    what: str
    life: Step
    delay: float
    on_error: Callable[[], None] = _nothing

    def run(self) -> Coroutine[Any, Any, None]:
        return restarting(self.life, self.what, self.delay, self.on_error)


@dataclass(frozen=True)
class Every:
    """A refresh every `seconds`; a failed round is skipped, never the end of it."""

    seconds: float
    step: Step

    def run(self) -> Coroutine[Any, Any, None]:
        return every(self.seconds, self.step)


@dataclass(frozen=True)
class Once:
    """Work that keeps itself going, or ends when done; the start waits up to `wait_s`
    for it to end (a value the tasks after it, or the first request, need)."""

    work: Work
    wait_s: float = 0.0

    def run(self) -> Coroutine[Any, Any, None]:
        return self.work()


Task = Restarting | Every | Once


@dataclass(frozen=True)
class Service:
    """What one service's HTTP app is made of."""

    name: str  # "registry": titled "makelocal registry", metrics makelocal_registry_*
    metrics: CollectorRegistry
    checks: Mapping[str, Check]  # /readyz: every one must pass (and the database's first)
    max_body_bytes: int
    routers: Sequence[APIRouter] = ()
    description: str = ""
    database: Database | None = None
    tasks: Sequence[Task] = ()
    # the middleware a request meets after BodyLimit and HttpMetrics, outermost first
    middleware: Sequence[Middleware] = ()
    asyncapi: dict[str, Any] | None = None
    # routes ahead of the routers (a mount of static files)
    mounts: Sequence[BaseRoute] = ()
    webhooks: APIRouter | None = None
    # False: no /openapi.json nor /docs (a web page, not an API)
    openapi: bool = True
    # what turns failures into answers: the JSON error shape, or a service's own pages
    errors: Callable[[FastAPI], None] = install_error_handlers
    starting: Sequence[Step] = ()  # before the database
    stopping: Sequence[Step] = ()  # after the tasks end, before the pool closes
    state: Mapping[str, object] = field(default_factory=dict)  # on app.state


def build(service: Service) -> FastAPI:
    """The service's FastAPI app: its routes, the error handlers, /docs, the operational
    routes, the middleware in order, traced, and the lifespan above."""
    app = FastAPI(title=f"makelocal {service.name}", version="1",
                  description=service.description, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if service.openapi else None,
                  webhooks=service.webhooks, lifespan=_lifespan(service))
    app.router.routes.extend(service.mounts)
    for router in service.routers:
        app.include_router(router)
    for name, value in service.state.items():
        setattr(app.state, name, value)
    service.errors(app)
    if service.openapi:
        install_docs(app)
    install_operational_routes(app, service.metrics, _checks(service), service.asyncapi)
    # add_middleware puts each outside those before it: the innermost goes first
    for inner in reversed(service.middleware):
        app.add_middleware(inner.cls, *inner.args, **inner.kwargs)
    app.add_middleware(HttpMetrics, registry=service.metrics,
                       prefix=f"makelocal_{service.name}")
    app.add_middleware(BodyLimit, limit=service.max_body_bytes)
    tracing.instrument(app)
    return app


def _checks(service: Service) -> dict[str, Check]:
    if service.database is None:
        return dict(service.checks)
    store = service.database.store

    async def database() -> None:
        await store.pool.fetchval("SELECT 1")

    return {"database": database, **service.checks}


def _lifespan(service: Service) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for step in service.starting:
            await step()
        pool = await _open(service.database) if service.database else None
        tasks: list[asyncio.Task[None]] = []
        try:
            for task in service.tasks:
                tasks.append(asyncio.create_task(task.run()))
                if isinstance(task, Once) and task.wait_s > 0:
                    await asyncio.wait({tasks[-1]}, timeout=task.wait_s)
            yield
        finally:
            for running in tasks:
                running.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for step in service.stopping:
                await step()
            if pool is not None:
                await _close(pool)

    return lifespan


async def _open(database: Database) -> asyncpg.Pool:
    await db.migrate(database.url, database.schema, database.package)
    pool = await db.create_pool(database.url, database.schema, max_size=database.pool_size)
    database.store.pool = pool
    return pool


async def _close(pool: asyncpg.Pool) -> None:
    try:  # graceful: waits for every connection to come back
        await asyncio.wait_for(pool.close(), SHUTDOWN_WAIT_S)
    except TimeoutError:  # one still held: shutting down must not hang on it
        pool.terminate()
