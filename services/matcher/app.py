"""Wiring: settings -> NATS, lease, index, worker, HTTP app. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from contracts import asyncapi
from contracts.events import partition_filters
from services.common import logs, shell, tracing
from services.common import nats as nats_util
from services.common.nats import PartitionMismatch
from services.common.partitions import refuse_other_partitions
from services.matcher import api
from services.matcher.consumer import MatcherWorker
from services.matcher.index import CapabilityIndex
from services.matcher.lease import Lease, Standby, new_owner_id
from services.matcher.metrics import MatcherMetrics
from services.matcher.settings import MatcherSettings

log = logging.getLogger(__name__)
REFUSED_RECHECK_S = 30.0  # a refused start is tried again this often (the registry may change)


def create_app(settings: MatcherSettings | None = None) -> FastAPI:
    settings = settings or MatcherSettings()
    registry = CollectorRegistry()
    metrics = MatcherMetrics(registry)
    index = CapabilityIndex()
    owner = new_owner_id()
    state: dict[str, MatcherWorker | None] = {"worker": None}
    status: dict[str, Exception | None] = {"refused": None, "standby": None}

    async def run_worker() -> None:
        """One life of the worker: wait as standby until the partition's lease is ours,
        then start from the checkpoint and consume until a failure or the lease is lost."""
        nc = await nats_util.connect(settings.nats_url, f"matcher-{settings.durable}")
        lease = Lease(nc.jetstream(), settings.bucket, owner, settings.matcher_lease_s,
                      settings.matcher_heartbeat_s)
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
                                   partitions=settings.partitions,
                                   matches_max_bytes=settings.matches_max_bytes,
                                   matches_duplicate_window_s=settings.matches_duplicate_window_s,
                                   guard=lease.check)
            state["worker"] = worker
            try:
                await worker.check_partitions()
            except PartitionMismatch as exc:
                status["refused"] = exc
                log.error("matcher refuses to start", extra={"error": str(exc)})
                await asyncio.sleep(REFUSED_RECHECK_S)
                return
            status["refused"] = None
            await worker.checkpoint.open()  # the lease lives in the checkpoint's bucket
            status["standby"] = Standby(f"partition {settings.matcher_partition} is held "
                                        "by another process")
            await lease.acquire()
            status["standby"] = None
            metrics.lease_held.set(1)
            await first_to_end(worker_life(worker), lease.keep())
        finally:
            metrics.lease_held.set(0)
            # a clean stop hands the partition over at once, not after a lease
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lease.release(), 2)
            await nc.close()

    def forget_worker() -> None:
        state["worker"] = None

    async def partitions_agree() -> None:
        if status["refused"] is not None:
            raise status["refused"]

    async def lease_held() -> None:
        if status["standby"] is not None:
            raise status["standby"]

    async def index_loaded() -> None:
        worker = state["worker"]
        if worker is None or not worker.ready.is_set():
            raise ConnectionError("index not loaded yet")

    async def nats_ready() -> None:
        worker = state["worker"]
        if worker is None or not worker.nc.is_connected:
            raise ConnectionError("NATS not connected")

    return shell.build(shell.Service(
        name="matcher", metrics=registry, max_body_bytes=settings.max_body_bytes,
        description="Which facilities can make which designs, and why; answered from the "
                    "live index.",
        routers=[api.router(index)],
        checks={"partitions": partitions_agree, "lease": lease_held, "index": index_loaded,
                "nats": nats_ready},
        asyncapi=asyncapi.document("matcher", settings.nats_url),
        tasks=[shell.Restarting("matcher", run_worker, 1.0, forget_worker)],
        state={"index": index}))


async def worker_life(worker: MatcherWorker) -> None:
    await worker.start()
    await worker.run()


async def first_to_end(*steps: Awaitable[None]) -> None:
    """Run the steps together until one ends (they end only by raising: its error is
    raised here); the others are cancelled at once."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    import uvicorn

    settings = MatcherSettings()
    logs.configure("matcher", settings.log_level)
    tracing.configure("makelocal-matcher")
    refuse_other_partitions(settings.nats_url, settings.partitions, "matcher")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.matcher_port,
                log_config=None, access_log=False)
