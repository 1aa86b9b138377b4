"""REGISTRY in, MATCHES out: the matcher's event loop.

Start: load the checkpoint (or, with none, build the index from REGISTRY silently), apply
again any batch the write-ahead record holds, then consume from the position after it
with a durable consumer and explicit acks. Each batch: apply every change to the index,
write the write-ahead record, publish the match events (pipelined), commit the checkpoint,
ack. A failure anywhere naks the batch for redelivery; nothing is acked that is not
checkpointed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts.events import REGISTRY_STREAM, REGISTRY_SUBJECTS
from contracts.matches import MATCHES_MAX_BYTES, Piece
from services.common import collector
from services.common import nats as nats_util
from services.common.faults import crash_point
from services.matcher.checkpoint import Change, Checkpoint, Entity, Loaded
from services.matcher.diff import apply_design, apply_facility
from services.matcher.index import CapabilityIndex
from services.matcher.metrics import MatcherMetrics
from services.matcher.outgoing import change_pieces
from services.matcher.profiles import design_profile, facility_profile

log = logging.getLogger(__name__)
PUBLISH_WINDOW = 256  # MATCHES pieces in flight before waiting for their acks
PAIRS_HELD = 200_000  # pairs read out before they are published (about 5 MB of pieces)




class MatcherWorker:
    def __init__(self, nc: Client, index: CapabilityIndex, metrics: MatcherMetrics, *,
                 bucket: str, durable: str, filter_subjects: list[str], batch: int = 1000,
                 replicas: int = 1, snapshot_every: int = 50_000,
                 piece_bytes: int | None = None, partition: int = 0,
                 matches_max_bytes: int = MATCHES_MAX_BYTES) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.index, self.metrics = index, metrics
        self.checkpoint = Checkpoint(self.js, bucket, replicas, snapshot_every)
        self.durable, self.filter_subjects = durable, filter_subjects
        self.batch, self.replicas = batch, replicas
        self.position = 0
        # MATCHES pieces stay under the server's largest message (its INFO says which),
        # or under `piece_bytes` when that is smaller
        self.piece_bytes = min(nc.max_payload, piece_bytes or nc.max_payload)
        self.partition = partition
        self.matches_max_bytes = matches_max_bytes
        self.ready = asyncio.Event()

    # start-up

    async def start(self) -> None:
        started = time.perf_counter()
        await nats_util.ensure_stream(self.nc, nats_util.matches_stream(
            self.replicas, self.matches_max_bytes))
        await self.checkpoint.open()
        with gc_paused():
            loaded = await self.checkpoint.load()
            if loaded is None:
                await self._build_from_registry()
            else:
                self._restore(loaded)
                if loaded.pending:
                    await self._replay(loaded.pending)
        await self._bind_consumer()
        self.metrics.startup_seconds.set(time.perf_counter() - started)
        self.metrics.observe_index(self.index)
        self.ready.set()

    def _restore(self, loaded: Loaded) -> None:
        self.position = loaded.position
        self._load(loaded.entities)
        log.info("checkpoint loaded", extra={"position": loaded.position,
                                             "count": len(loaded.entities),
                                             "pending": len(loaded.pending)})

    def _load(self, entities: Iterable[Entity]) -> None:
        designs, facilities = [], []
        for kind, entity_id, version, profile in entities:
            if profile is None:
                self._set(kind, entity_id, None, version)
            elif kind == "design":
                designs.append(profile)
            else:
                facilities.append(profile)
        self.index.load(designs, facilities)  # type: ignore[arg-type]

    def entities(self) -> Iterator[Entity]:
        """Everything the checkpoint must hold: every profile and every deletion."""
        for kind, side in (("design", self.index.designs), ("facility", self.index.facilities)):
            for profile in side.values():
                yield kind, profile.id, profile.version, profile
            for entity_id, version in side.deleted.items():
                yield kind, entity_id, version, None

    async def _replay(self, pending: list[Change]) -> None:
        """Put the index back as it was before the batch, then apply the batch again."""
        for change in reversed(pending):
            self._set(change.kind, change.entity_id, change.old,
                      change.old.version if change.old else 0)
        log.info("replaying an interrupted batch", extra={"count": len(pending)})
        await self._apply_and_publish(pending)

    def _set(self, kind: str, entity_id: str, profile: Any, version: int) -> None:
        """The entity as `profile` at `version` (None: deleted then; version 0: unseen)."""
        side = self.index.designs if kind == "design" else self.index.facilities
        if profile is not None:
            (self.index.put_design if kind == "design" else self.index.put_facility)(profile)
            return
        (self.index.remove_design if kind == "design" else self.index.remove_facility)(
            entity_id, version or None)
        if not version:
            side.deleted.pop(entity_id, None)

    async def _build_from_registry(self) -> None:
        """No checkpoint: index the stream's content as it is, emitting nothing."""
        try:
            info = await self.js.stream_info(REGISTRY_STREAM)
        except NotFoundError:
            await self.checkpoint.reset(0, [])
            return
        last = info.state.last_seq
        latest: dict[tuple[str, str], Entity] = {}
        if info.state.messages:
            sub = await self.js.subscribe(REGISTRY_SUBJECTS, stream=REGISTRY_STREAM,
                                          ordered_consumer=True,
                                          deliver_policy=DeliverPolicy.ALL,
                                          pending_msgs_limit=-1, pending_bytes_limit=-1)
            try:
                while True:
                    msg = await sub.next_msg(timeout=10)
                    seq = msg.metadata.sequence.stream
                    if self._wanted(msg.subject):
                        read = self._read(msg.data, lambda k, i, v: v > latest.get(
                            (k, i), ("", "", 0))[2])
                        if read is not None:
                            kind, entity_id, version, profile, _, _ = read
                            latest[(kind, entity_id)] = (kind, entity_id, version, profile)
                    if seq >= last:
                        break
            finally:
                await sub.unsubscribe()
        self._load(latest.values())
        self.position = last
        await self.checkpoint.reset(last, self.entities())
        log.info("index built from REGISTRY", extra={"count": len(latest)})

    def _read(self, data: bytes, is_new: Callable[[str, str, int], bool],
              ) -> tuple[str, str, int, Any, str | None, str | None] | None:
        """(kind, id, version, profile or None, event id, occurred at) of a REGISTRY
        message whose version `is_new`; None for an old one, whose profile is not built,
        and for one that cannot be read (logged and counted: skipping it is the only way
        past it, and the registry never writes one)."""
        try:
            event = orjson.loads(data)
            kind = event["type"].split(".", 1)[0]
            if kind not in ("design", "facility"):
                raise ValueError(f"unknown event type {event['type']!r}")
            entity_id, version = str(event["entity_id"]), int(event["version"])
            if not is_new(kind, entity_id, version):
                return None
            body = event.get("data")
            profile = None if body is None else (
                design_profile if kind == "design" else facility_profile)(body, version)
            return (kind, entity_id, version, profile, event.get("event_id"),
                    event.get("occurred_at"))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            self.metrics.unreadable.inc()
            log.error("unreadable REGISTRY message skipped", extra={"error": repr(exc)})
            return None

    def _wanted(self, subject: str) -> bool:
        return any(_subject_matches(f, subject) for f in self.filter_subjects)

    async def _bind_consumer(self) -> None:
        # The checkpoint, not the consumer, says where to resume: recreate it there.
        try:
            await self.js.delete_consumer(REGISTRY_STREAM, self.durable)
        except NotFoundError:
            pass
        config = ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=60,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.position + 1,
            max_ack_pending=20_000, filter_subjects=self.filter_subjects)
        await self.js.add_consumer(REGISTRY_STREAM, config)
        self.subscription = await self.js.pull_subscribe_bind(durable=self.durable,
                                                              stream=REGISTRY_STREAM)

    # the loop

    async def run(self) -> None:
        # A failed batch raises: the index may be half-updated, restart from the checkpoint.
        await nats_util.consume_batches(self.subscription, self.batch, self.handle,
                                        self._observe_lag, self.metrics.errors.inc)

    async def handle(self, msgs: list[Msg]) -> None:
        changes = []
        in_batch: dict[tuple[str, str], tuple[Any, int]] = {}
        for msg in msgs:
            change = self._change(msg.metadata.sequence.stream, msg.data, in_batch)
            if change is not None:
                changes.append(change)
        self.metrics.consumed.inc(len(msgs))
        if changes:
            await self._apply_and_publish(changes)
        last = max(m.metadata.sequence.stream for m in msgs)
        if not changes and last > self.position:
            await self._commit(None, last)
        self.position = max(self.position, last)
        if self.checkpoint.due:
            await self.checkpoint.snapshot(self.position, self.entities())
        for msg in msgs:
            await msg.ack()

    def _change(self, seq: int, data: bytes,
                in_batch: dict[tuple[str, str], tuple[Any, int]]) -> Change | None:
        """The change a REGISTRY message makes, or None when it is already applied.
        `in_batch` holds the state earlier changes of the same batch leave an entity in."""
        def applied(kind: str, entity_id: str) -> tuple[Any, int]:
            if (kind, entity_id) in in_batch:
                return in_batch[(kind, entity_id)]
            side = self.index.designs if kind == "design" else self.index.facilities
            return side.get(entity_id), self.index.version(kind, entity_id)

        read = self._read(data, lambda k, i, v: v > applied(k, i)[1])
        if read is None:
            return None
        kind, entity_id, version, new, event_id, occurred_at = read
        old = applied(kind, entity_id)[0]
        in_batch[(kind, entity_id)] = (new, version)
        return Change(seq, kind, entity_id, version, old, new, event_id, occurred_at)

    async def _apply_and_publish(self, changes: list[Change]) -> None:
        # The record is written while the batch is applied; events go out once it is
        # durable, in slices, so that a batch of large fan-outs never holds them all.
        written = await self.checkpoint.begin(changes)
        pieces: list[Piece] = []
        held = 0
        for change in changes:
            started = time.perf_counter()
            apply = apply_design if change.kind == "design" else apply_facility
            diff = apply(self.index, change.entity_id, change.new,  # type: ignore[arg-type]
                         change.version)
            self.metrics.change_seconds.observe(time.perf_counter() - started)
            # read out now: the next change may give a slot of this diff to another entity
            made = change_pieces(diff, change, self.index, self.piece_bytes, self.partition)
            pairs = sum(p.found + p.withdrawn for p in made)
            log.info("change applied", extra={
                "event_id": change.cause_event_id, "entity_id": change.entity_id,
                "kind": change.kind, "version": change.version, "seq": change.seq,
                "transitions": pairs})
            pieces.extend(made)
            held += pairs
            if held >= PAIRS_HELD:
                await self._publish_after(written, pieces)
                pieces, held = [], 0
        await self._publish_after(written, pieces)
        crash_point("matcher.after_publish")
        await self._commit(changes[0].seq, max(c.seq for c in changes))
        self.metrics.observe_index(self.index)

    async def _commit(self, first_seq: int | None, last: int) -> None:
        """The checkpoint's position moves to `last` (first_seq: the batch record applied,
        None when the batch changed nothing)."""
        await self.checkpoint.commit(last)
        log.info("batch committed", extra={"first_seq": first_seq, "position": last})
        self.position = max(self.position, last)

    async def _publish_after(self, written: asyncio.Future[Any], pieces: list[Piece],
                             ) -> None:
        await asyncio.wait_for(written, 30)
        crash_point("matcher.after_begin")
        await self._publish(pieces)

    async def _publish(self, pieces: list[Piece]) -> None:
        """Pipelined: a window of publishes in flight, then their acks, then the next."""
        window = min(PUBLISH_WINDOW, max(1, (len(pieces) + 1) // 2))
        for start in range(0, len(pieces), window):
            futures = [await self.js.publish_async(p.subject, p.payload, headers=p.headers)
                       for p in pieces[start:start + window]]
            await asyncio.wait_for(asyncio.gather(*futures), 30)
            if start == 0 and window < len(pieces):
                crash_point("matcher.mid_publish")
        self.metrics.messages.inc(len(pieces))
        self.metrics.found.inc(sum(p.found for p in pieces))
        self.metrics.withdrawn.inc(sum(p.withdrawn for p in pieces))

    async def _observe_lag(self) -> None:
        try:
            info = await self.subscription.consumer_info()
            self.metrics.pending.set(info.num_pending + (info.num_ack_pending or 0))
        except Exception as exc:
            log.debug("consumer info failed", extra={"error": repr(exc)})


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Start-up allocates millions of objects that live as long as the process: the
    collector would scan them again and again (a 100,000-entity load took 20 s with it,
    1.5 s without). After, they are frozen out of its generations, so later collections
    do not walk the whole index either; and they run less often (collector.THRESHOLD)."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        collector.collect_less_often()
        gc.enable()


def _subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)
