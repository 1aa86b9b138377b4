"""Wiring: settings -> NATS, index, worker, HTTP app. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from contracts import asyncapi
from contracts.events import partition_filters
from services.common import logs
from services.common import nats as nats_util
from services.common.http import (
    BodyLimit,
    HttpMetrics,
    install_error_handlers,
    install_operational_routes,
)
from services.common.tasks import restarting
from services.matcher import api
from services.matcher.consumer import MatcherWorker
from services.matcher.index import CapabilityIndex
from services.matcher.metrics import MatcherMetrics
from services.matcher.settings import MatcherSettings


def create_app(settings: MatcherSettings | None = None) -> FastAPI:
    settings = settings or MatcherSettings()
    registry = CollectorRegistry()
    metrics = MatcherMetrics(registry)
    index = CapabilityIndex()
    state: dict[str, MatcherWorker | None] = {"worker": None}

    async def run_worker() -> None:
        """One life of the worker; after a failure the next starts from the checkpoint."""
        nc = await nats_util.connect(settings.nats_url, f"matcher-{settings.durable}")
        try:
            index.clear()  # the checkpoint is the truth; start from it every time
            worker = MatcherWorker(nc, index, metrics, bucket=settings.bucket,
                                   durable=settings.durable,
                                   filter_subjects=partition_filters(settings.partitions,
                                                                     settings.matcher_partition),
                                   batch=settings.matcher_batch,
                                   replicas=settings.matcher_stream_replicas,
                                   snapshot_every=settings.matcher_snapshot_every,
                                   piece_bytes=settings.matcher_piece_bytes,
                                   partition=settings.matcher_partition,
                                   matches_max_bytes=settings.matches_max_bytes)
            state["worker"] = worker
            await worker.start()
            await worker.run()
        finally:
            await nc.close()

    def forget_worker() -> None:
        state["worker"] = None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(restarting(run_worker, "matcher", 1.0, forget_worker))
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    app = FastAPI(title="makelocal matcher", version="1", lifespan=lifespan,
                  description="Which facilities can make which designs, and why; answered "
                              "from the live index.")

    async def index_loaded() -> None:
        worker = state["worker"]
        if worker is None or not worker.ready.is_set():
            raise ConnectionError("index not loaded yet")

    async def nats_ready() -> None:
        worker = state["worker"]
        if worker is None or not worker.nc.is_connected:
            raise ConnectionError("NATS not connected")

    app.include_router(api.router(index))
    install_error_handlers(app)
    install_operational_routes(app, registry, {"index": index_loaded, "nats": nats_ready},
                               asyncapi.document("matcher", settings.nats_url))
    app.add_middleware(HttpMetrics, registry=registry, prefix="makelocal_matcher")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.state.index = index
    return app


def main() -> None:
    import uvicorn

    settings = MatcherSettings()
    logs.configure("matcher", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.matcher_port,
                log_config=None, access_log=False)
