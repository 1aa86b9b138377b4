"""One shell for every service's HTTP app: a service says what it has (a `Service`), and
`build` makes its FastAPI app with one lifespan.

The lifespan, step by step, and what a crash at each leaves:
1. the service's `starting` steps (a warm-up): nothing of ours written;
2. its database migrated (each migration in its own transaction, under an advisory lock):
   the schema as of the last migration applied, the next start goes on from there;
3. the pool opened and handed to its store;
4. its background tasks started in order, each waiting up to its `wait_s` for a value
   later ones need; they keep their own state (outbox, checkpoints, deliveries), a crash
   leaves it as their own docstrings say; a `Once` that raises is logged and fails
   /readyz from then on (nothing restarts it);
5. serving; at shutdown the tasks are cancelled, the `stopping` steps run, and the pool
   closes, waiting a bounded time for its connections (never hanging on one held).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
from services.common.middleware import BodyLimit, HttpMetrics, NoNulInQuery
from services.common.tasks import every, restarting

log = logging.getLogger(__name__)
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
    # the middleware a request meets after HttpMetrics and BodyLimit, outermost first
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
    checks = _checks(service)
    app = FastAPI(title=f"makelocal {service.name}", version="1",
                  description=service.description, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if service.openapi else None,
                  webhooks=service.webhooks, lifespan=_lifespan(service, checks))
    app.router.routes.extend(service.mounts)
    for router in service.routers:
        app.include_router(router)
    for name, value in service.state.items():
        setattr(app.state, name, value)
    service.errors(app)
    if service.openapi:
        install_docs(app)
    install_operational_routes(app, service.metrics, checks, service.asyncapi)
    # add_middleware puts each outside those before it: the innermost goes first
    for inner in reversed(service.middleware):
        app.add_middleware(inner.cls, *inner.args, **inner.kwargs)
    app.add_middleware(NoNulInQuery)
    app.add_middleware(BodyLimit, limit=service.max_body_bytes)
    # Outside BodyLimit: a body found too large mid-read ends the app below with an
    # exception, which metrics inside would count as a 500 (and page someone).
    app.add_middleware(HttpMetrics, registry=service.metrics,
                       prefix=f"makelocal_{service.name}")
    tracing.instrument(app)
    return app


def _checks(service: Service) -> dict[str, Check]:
    if service.database is None:
        return dict(service.checks)
    store = service.database.store

    async def database() -> None:
        await store.pool.fetchval("SELECT 1")

    return {"database": database, **service.checks}


def _lifespan(service: Service, checks: dict[str, Check]
              ) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for step in service.starting:
            await step()
        pool = await _open(service.database) if service.database else None
        tasks: list[asyncio.Task[None]] = []
        try:
            for task in service.tasks:
                tasks.append(asyncio.create_task(task.run()))
                if isinstance(task, Once):
                    tasks[-1].add_done_callback(_watched(task, checks))
                    if task.wait_s > 0:
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


class TaskEnded(Exception):
    """A background task of this process raised and is gone (the log has why)."""


def _watched(task: Once, checks: dict[str, Check]) -> Callable[[asyncio.Task[None]], None]:
    """What to do when a Once ends: nothing when it ended as planned; when it raised, it
    is gone for good (nothing restarts it), so the log says so and /readyz fails on it
    (the checks are read at each request) until the process is replaced."""
    name = getattr(task.work, "__name__", "task")

    def ended(done: asyncio.Task[None]) -> None:
        if done.cancelled() or done.exception() is None:
            return
        error = done.exception()
        log.error(f"background task {name} ended with an error; not ready from now on",
                  exc_info=error)

        async def failed() -> None:
            # a new one each time: raising `error` again would lengthen its traceback
            raise TaskEnded(name)

        checks[name] = failed

    return ended


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
