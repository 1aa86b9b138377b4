"""NATS connections and stream definitions."""

from __future__ import annotations

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, SubjectTransform
from nats.js.errors import NotFoundError

from contracts.matches import (
    MATCHES_DUPLICATE_WINDOW_S,
    MATCHES_MAX_AGE_S,
    MATCHES_STREAM,
    MATCHES_SUBJECTS,
)


async def connect(url: str, name: str, **options: object) -> Client:
    """A connection that keeps reconnecting: a NATS restart must not need ours."""
    return await nats.connect(
        servers=url.split(","), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        connect_timeout=2, **options,  # type: ignore[arg-type]
    )


async def ensure_stream(nc: Client, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one's settings up to date."""
    js = nc.jetstream()
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)


def compacted_stream(name: str, subjects: list[str], duplicate_window_s: float,
                     replicas: int = 1,
                     transform: tuple[str, str] | None = None) -> StreamConfig:
    """A changelog that keeps only the latest message per subject (per entity)."""
    return StreamConfig(
        name=name, subjects=subjects, storage=StorageType.FILE, max_msgs_per_subject=1,
        duplicate_window=duplicate_window_s, discard=DiscardPolicy.OLD, num_replicas=replicas,
        subject_transform=SubjectTransform(src=transform[0], dest=transform[1])
        if transform else None,
    )


def matches_stream(replicas: int) -> StreamConfig:
    """Match events, kept for a month: the matcher publishes, the notifier consumes."""
    return StreamConfig(name=MATCHES_STREAM, subjects=[MATCHES_SUBJECTS],
                        storage=StorageType.FILE, duplicate_window=MATCHES_DUPLICATE_WINDOW_S,
                        max_age=MATCHES_MAX_AGE_S, num_replicas=replicas)


async def fetch_ready(sub: JetStreamContext.PullSubscription, batch: int,
                      idle_timeout: float = 1.0) -> list[Msg]:
    """Wait for one message, then take whatever else is there without waiting: nats-py's
    fetch(batch) that finds nothing at once holds the first message that then arrives
    until `batch` are there or its timeout passes (up to a second of added latency for
    every change on a quiet stream). Raises TimeoutError when nothing came."""
    msgs = await sub.fetch(1, timeout=idle_timeout)
    if batch > 1:
        try:
            msgs += await sub.fetch(batch - 1, timeout=0.005)
        except TimeoutError:
            pass  # nothing more was there; a late answer waits in the queue for next time
    return msgs
