"""NATS connections, stream definitions and the batch loop of our pull consumers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, SubjectTransform
from nats.js.errors import NotFoundError

from contracts.events import REGISTRY_STREAM, partitions_of
from contracts.matches import (
    MATCHES_DUPLICATE_WINDOW_S,
    MATCHES_MAX_AGE_S,
    MATCHES_MAX_BYTES,
    MATCHES_STREAM,
    MATCHES_SUBJECTS,
)

log = logging.getLogger(__name__)


async def connect(url: str, name: str, *, user: str | None = None,
                  password: str | None = None, **options: object) -> Client:
    """A connection that keeps reconnecting: a NATS restart must not need ours. As `user`
    (else MAKELOCAL_NATS_USER and MAKELOCAL_NATS_PASSWORD, the user of this service's
    process: every caller gets its credentials without passing them along)."""
    if user is None:
        user, password = credentials()
    if user:
        options |= {"user": user, "password": password or ""}
    return await nats.connect(
        servers=url.split(","), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        connect_timeout=2, **options,  # type: ignore[arg-type]
    )


def credentials() -> tuple[str | None, str | None]:
    """(user, password) from the environment, (None, None) when NATS needs none."""
    from services.common.settings import CommonSettings

    settings = CommonSettings()
    secret = settings.nats_password
    return settings.nats_user, secret.get_secret_value() if secret else None


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


def matches_stream(replicas: int, max_bytes: int = MATCHES_MAX_BYTES,
                   duplicate_window_s: float = MATCHES_DUPLICATE_WINDOW_S) -> StreamConfig:
    """Match changes, kept for a month and at most `max_bytes` (the oldest go first): the
    matcher publishes, the notifier consumes."""
    return StreamConfig(name=MATCHES_STREAM, subjects=[MATCHES_SUBJECTS],
                        storage=StorageType.FILE, duplicate_window=duplicate_window_s,
                        max_age=MATCHES_MAX_AGE_S, max_bytes=max_bytes,
                        discard=DiscardPolicy.OLD, num_replicas=replicas)


async def consume_batches(sub: JetStreamContext.PullSubscription, batch: int,
                          handle: Callable[[list[Msg]], Awaitable[None]],
                          idle: Callable[[], Awaitable[None]],
                          on_failure: Callable[[], None] = lambda: None) -> None:
    """Fetch and handle batches until a batch fails: then nak it for redelivery and raise,
    so that the caller starts over from its durable state. `idle` runs when nothing came."""
    while True:
        try:
            msgs = await fetch_ready(sub, batch)
        except TimeoutError:
            await idle()
            continue
        try:
            await handle(msgs)
        except Exception:
            on_failure()
            log.exception("batch failed; it will be redelivered")
            for msg in msgs:
                await msg.nak(delay=1)
            raise


async def fetch_ready(sub: JetStreamContext.PullSubscription, batch: int,
                      idle_timeout: float = 1.0) -> list[Msg]:
    """Wait for one message, then take whatever else is there without waiting: nats-py's
    fetch(batch) that finds nothing at once holds the first message that then arrives
    until `batch` are there or its timeout passes (up to a second of added latency for
    every change on a quiet stream). Raises TimeoutError when nothing came."""
    msgs = await sub.fetch(1, timeout=idle_timeout)
    if batch > 1:
        try:
            # no_wait first: what is there comes at once; with nothing there, the
            # long poll that follows is cut short (1 ms, not the 5 it was: that was
            # added to every change on a quiet stream, in the matcher and notifier both)
            msgs += await sub.fetch(batch - 1, timeout=0.001)
        except TimeoutError:
            pass  # nothing more was there; a late answer waits in the queue for next time
    return msgs


class PartitionMismatch(Exception):
    """A service's partition count is not the one REGISTRY routes design events by."""


async def check_partitions(js: JetStreamContext, partitions: int, who: str) -> None:
    """PartitionMismatch unless REGISTRY's subject transform (where the registry records
    its partition count) spreads designs over `partitions`: else designs would go to no
    matcher, or to two, and a registry would silently re-route them. No stream yet:
    nothing to check."""
    try:
        info = await js.stream_info(REGISTRY_STREAM)
    except NotFoundError:
        return
    transform = info.config.subject_transform
    found = partitions_of(transform.dest if transform else None)
    if found != partitions:
        raise PartitionMismatch(
            f"MAKELOCAL_PARTITIONS is {partitions} for this {who} but the REGISTRY stream "
            f"spreads designs over {found} partition(s): set it to {found} (changing the "
            "count means moving every matcher's partition: not done by a restart)")
