"""REGISTRY in, MATCHES out: the matcher's event loop.

Start: load the checkpoint (or, with none, build the index from REGISTRY silently), apply
again any batch the write-ahead record holds, then consume from the position after it
with a durable consumer and explicit acks. Each batch: apply every change to the index,
write the write-ahead record, publish the match events (pipelined), commit the checkpoint,
ack. A failure anywhere naks the batch for redelivery; nothing is acked that is not
checkpointed. Every write only the partition's owner may make first passes `guard` (the
lease, lease.py). A message that is not a registry event is parked (_park), not retried.
When traced, each change is applied in a span child of its REGISTRY message's
traceparent, and its MATCHES pieces carry that span's."""

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
from pydantic import TypeAdapter, ValidationError

from contracts.events import REGISTRY_STREAM, REGISTRY_SUBJECTS, EntityKind, RegistryEvent
from contracts.matches import (
    MATCHES_DUPLICATE_WINDOW_S,
    MATCHES_MAX_BYTES,
    MATCHES_STREAM,
    MATCHES_SUBJECTS,
    Piece,
    change_subject,
)
from services.common import collector, tracing
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
# The registry validated every event against these models before publishing it; reading
# it again through them is what tells a stranger's message (or a corrupted one) apart.
_EVENT: TypeAdapter[Any] = TypeAdapter(RegistryEvent)
Read = tuple[EntityKind, str, int, Any, str | None, str | None]


class Malformed(Exception):
    """A REGISTRY message that is not a registry event: parked, never retried."""


class MatcherWorker:
    def __init__(self, nc: Client, index: CapabilityIndex, metrics: MatcherMetrics, *,
                 bucket: str, durable: str, filter_subjects: list[str], batch: int = 1000,
                 replicas: int = 1, snapshot_every: int = 50_000,
                 piece_bytes: int | None = None, partition: int = 0, partitions: int = 1,
                 matches_max_bytes: int = MATCHES_MAX_BYTES,
                 matches_duplicate_window_s: float = MATCHES_DUPLICATE_WINDOW_S,
                 guard: Callable[[], None] = lambda: None) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.index, self.metrics = index, metrics
        self.checkpoint = Checkpoint(self.js, bucket, replicas, snapshot_every)
        self.durable, self.filter_subjects = durable, filter_subjects
        self.batch, self.replicas = batch, replicas
        self.position = 0
        # MATCHES pieces stay under the server's largest message (its INFO says which),
        # or under `piece_bytes` when that is smaller
        self.piece_bytes = min(nc.max_payload, piece_bytes or nc.max_payload)
        self.partition, self.partitions = partition, partitions
        self.matches_max_bytes = matches_max_bytes
        self.matches_duplicate_window_s = matches_duplicate_window_s
        self.guard = guard
        self.matches_seq = 0  # MATCHES' sequence at or before our next piece
        self.ready = asyncio.Event()

    # start-up

    async def check_partitions(self) -> None:
        """PartitionMismatch unless REGISTRY routes designs by our partition count."""
        await nats_util.check_partitions(self.js, self.partitions, "matcher")

    async def start(self) -> None:
        started = time.perf_counter()
        await nats_util.ensure_stream(self.nc, nats_util.matches_stream(
            self.replicas, self.matches_max_bytes, self.matches_duplicate_window_s))
        await self.checkpoint.open()
        self.matches_seq = (await self.js.stream_info(MATCHES_STREAM)).state.last_seq
        with gc_paused():
            loaded = await self.checkpoint.load()
            if loaded is None:
                await self._build_from_registry()
            else:
                self._restore(loaded)
                if loaded.pending:
                    await self._replay(loaded.pending, loaded.matches_after)
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

    async def _replay(self, pending: list[Change], matches_after: int | None) -> None:
        """Put the index back as it was before the batch, then apply the batch again,
        publishing only the pieces MATCHES does not hold yet."""
        for change in reversed(pending):
            self._set(change.kind, change.entity_id, change.old,
                      change.old.version if change.old else 0)
        log.info("replaying an interrupted batch", extra={"count": len(pending)})
        published: set[str] = set()
        if matches_after is not None:
            try:
                published = await self._published_since(matches_after, pending)
            except Exception as exc:
                # (NATS permissions without MATCHES' ordered consumers, say) not a reason
                # to stop the partition: JetStream still drops repeats within its window,
                # and consumers drop repeated pairs by event id
                log.error("MATCHES could not be read: the replay publishes every piece",
                          extra={"error": repr(exc)})
        # the record written again keeps the first attempt's sequence: a crash during
        # this replay must still find that attempt's pieces
        await self._apply_and_publish(pending, published, matches_after)

    async def _published_since(self, after: int, changes: list[Change]) -> set[str]:
        """The Nats-Msg-Id of every MATCHES message after sequence `after` on the subjects
        of `changes`: the pieces of theirs already published. JetStream's own duplicate
        check forgets ids after its window; this reads the stream, however old."""
        last = (await self.js.stream_info(MATCHES_STREAM)).state.last_seq
        if last <= after:
            return set()
        subjects = {change_subject(c.kind, c.entity_id) for c in changes}
        sub = await self.js.subscribe(
            MATCHES_SUBJECTS, stream=MATCHES_STREAM, ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, headers_only=True,
            config=ConsumerConfig(opt_start_seq=after + 1),
            pending_msgs_limit=-1, pending_bytes_limit=-1)
        published = set()
        try:
            while True:
                msg = await sub.next_msg(timeout=10)
                if msg.subject in subjects and msg.headers:
                    published.add(msg.headers.get("Nats-Msg-Id", ""))
                if msg.metadata.sequence.stream >= last:
                    return published
        finally:
            await sub.unsubscribe()

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
                        read = await self._read_or_park(
                            seq, msg.subject, msg.data,
                            lambda k, i, v: v > latest.get((k, i), ("", "", 0))[2])
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

    async def _read_or_park(self, seq: int, subject: str, data: bytes,
                            is_new: Callable[[str, str, int], bool]) -> Read | None:
        """_read, parking a malformed message (None then)."""
        try:
            return _read(subject, data, is_new)
        except Malformed as exc:
            await self._park(seq, subject, data, str(exc))
            return None

    async def _park(self, seq: int, subject: str, data: bytes, why: str) -> None:
        """Skipping it is the only way past a message that is not a registry event (the
        registry never writes one): count it, say where it is, keep it as a dead letter
        (the checkpoint bucket's `parked.<seq>`)."""
        self.metrics.parked.inc()
        log.error("malformed REGISTRY message parked",
                  extra={"seq": seq, "subject": subject, "error": why})
        await self.checkpoint.park(seq, subject, data, why)

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
        parked = set()
        in_batch: dict[tuple[str, str], tuple[Any, int]] = {}
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            try:
                change = self._change(seq, msg.subject, msg.data, in_batch)
            except Malformed as exc:
                await self._park(seq, msg.subject, msg.data, str(exc))
                parked.add(seq)
                continue
            if change is not None:
                changes.append(change)
        self.metrics.consumed.inc(len(msgs))
        if changes:
            await self._apply_and_publish(changes, contexts=_contexts(msgs))
        last = max(m.metadata.sequence.stream for m in msgs)
        if not changes and last > self.position:
            await self._commit(None, last)
        self.position = max(self.position, last)
        if self.checkpoint.due:
            self.guard()
            await self.checkpoint.snapshot(self.position, self.entities())
        self.guard()
        for msg in msgs:
            # term: the server never redelivers it, and says so in an advisory
            await (msg.term() if msg.metadata.sequence.stream in parked else msg.ack())

    def _change(self, seq: int, subject: str, data: bytes,
                in_batch: dict[tuple[str, str], tuple[Any, int]]) -> Change | None:
        """The change a REGISTRY message makes, or None when it is already applied.
        `in_batch` holds the state earlier changes of the same batch leave an entity in."""
        def applied(kind: str, entity_id: str) -> tuple[Any, int]:
            if (kind, entity_id) in in_batch:
                return in_batch[(kind, entity_id)]
            side = self.index.designs if kind == "design" else self.index.facilities
            return side.get(entity_id), self.index.version(kind, entity_id)

        read = _read(subject, data, lambda k, i, v: v > applied(k, i)[1])
        if read is None:
            return None
        kind, entity_id, version, new, event_id, occurred_at = read
        old = applied(kind, entity_id)[0]
        in_batch[(kind, entity_id)] = (new, version)
        return Change(seq, kind, entity_id, version, old, new, event_id, occurred_at)

    async def _apply_and_publish(self, changes: list[Change],
                                 published: set[str] | frozenset[str] = frozenset(),
                                 matches_after: int | None = None,
                                 contexts: dict[int, tracing.Context | None] | None = None,
                                 ) -> None:
        """`published`: ids of pieces MATCHES already holds (a replay's), not sent again;
        `matches_after`: a MATCHES sequence before any piece of the batch, when it is
        older than the latest we know of (a replay's first attempt); `contexts`: each
        change's trace context by stream sequence (_contexts), None when not traced."""
        # The record is written while the batch is applied; events go out once it is
        # durable, in slices, so that a batch of large fan-outs never holds them all.
        self.guard()
        written = await self.checkpoint.begin(
            changes, self.matches_seq if matches_after is None else matches_after)
        pieces: list[Piece] = []
        held = 0
        traced: dict[str, dict[str, str]] = {}  # piece id -> its change span's traceparent
        for change in changes:
            # (a change that raises leaves its span unended, so unexported: the batch is
            # retried whole)
            span = None if contexts is None else tracing.start(
                "match", contexts.get(change.seq), tracing.CONSUMER,
                {"makelocal.entity": f"{change.kind}:{change.entity_id}",
                 "makelocal.version": change.version})
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
            if span is not None:
                traced.update(dict.fromkeys([p.message_id for p in made],
                                            tracing.headers_of(span)))
                tracing.end(span)
            held += pairs
            if held >= PAIRS_HELD:
                await self._publish_after(written, pieces, published, traced)
                pieces, held = [], 0
        await self._publish_after(written, pieces, published, traced)
        crash_point("matcher.after_publish")
        await self._commit(changes[0].seq, max(c.seq for c in changes))
        self.metrics.observe_index(self.index)

    async def _commit(self, first_seq: int | None, last: int) -> None:
        """The checkpoint's position moves to `last` (first_seq: the batch record applied,
        None when the batch changed nothing)."""
        self.guard()
        await self.checkpoint.commit(last)
        log.info("batch committed", extra={"first_seq": first_seq, "position": last})
        self.position = max(self.position, last)

    async def _publish_after(self, written: asyncio.Future[Any], pieces: list[Piece],
                             published: set[str] | frozenset[str],
                             traced: dict[str, dict[str, str]]) -> None:
        await asyncio.wait_for(written, 30)
        crash_point("matcher.after_begin")
        fresh = [p for p in pieces if p.message_id not in published]
        if len(fresh) < len(pieces):
            log.info("pieces already in MATCHES not published again",
                     extra={"count": len(pieces) - len(fresh)})
        await self._publish(fresh, traced)

    async def _publish(self, pieces: list[Piece], traced: dict[str, dict[str, str]]) -> None:
        """Pipelined: a window of publishes in flight, then their acks, then the next.
        `traced`: the trace headers of the pieces whose change was traced, by piece id."""
        window = min(PUBLISH_WINDOW, max(1, (len(pieces) + 1) // 2))
        for start in range(0, len(pieces), window):
            self.guard()
            futures = [await self.js.publish_async(p.subject, p.payload,
                                                   headers=_headers(p, traced))
                       for p in pieces[start:start + window]]
            acks = await asyncio.wait_for(asyncio.gather(*futures), 30)
            self.matches_seq = max(self.matches_seq, *(a.seq for a in acks))
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


def _contexts(msgs: list[Msg]) -> dict[int, tracing.Context | None] | None:
    """Each REGISTRY message's trace context (the relay's publish span) by stream sequence;
    None when tracing is off."""
    if not tracing.enabled():
        return None
    return {m.metadata.sequence.stream: tracing.from_headers(m.headers) for m in msgs}


def _headers(piece: Piece, traced: dict[str, dict[str, str]]) -> dict[str, str]:
    """A MATCHES piece's headers, with its change span's traceparent when traced."""
    extra = traced.get(piece.message_id)
    return piece.headers | extra if extra else piece.headers


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


def _read(subject: str, data: bytes, is_new: Callable[[str, str, int], bool]) -> Read | None:
    """(kind, id, version, profile or None, event id, occurred at) of a REGISTRY message
    whose version `is_new`; None for an old one, whose profile is not built. Raises
    Malformed for a message that is not a registry event on its own subject."""
    try:
        event = orjson.loads(data)
        _EVENT.validate_python(event)
    except ValueError as exc:  # undecodable JSON, or not our shape (ValidationError)
        reason = (f"{exc.error_count()} invalid field(s), first {exc.errors()[0]['loc']}: "
                  f"{exc.errors()[0]['msg']}" if isinstance(exc, ValidationError)
                  else f"not JSON: {exc}")
        raise Malformed(reason) from None
    kind = EntityKind(event["type"].split(".", 1)[0])  # one of _EVENT's types
    entity_id, version = event["entity_id"], event["version"]
    # registry.<kind>.[<partition>.]<id>: a message under another entity's subject would
    # be compacted away with that entity's next change
    tokens = subject.split(".")
    if tokens[1] != kind or tokens[-1] != entity_id:
        raise Malformed(f"a {kind} event for {entity_id!r} under {subject}")
    if not is_new(kind, entity_id, version):
        return None
    body = event["data"]
    profile = None if body is None else (
        design_profile if kind == "design" else facility_profile)(body, version)
    return kind, entity_id, version, profile, event["event_id"], event["occurred_at"]


def _subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)
