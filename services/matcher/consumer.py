"""REGISTRY in, MATCHES out: the matcher's event loop.

Start: load the checkpoint (or, with none, build the index from REGISTRY silently), apply
again any batch the write-ahead record holds, then consume from the position after it
with a durable consumer and explicit acks. Each batch: apply every change to the index,
write the write-ahead record, publish the match events (pipelined), commit the checkpoint,
ack. A failure anywhere naks the batch for redelivery; nothing is acked that is not
checkpointed."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import TypeAdapter

from contracts.events import REGISTRY_STREAM, REGISTRY_SUBJECTS, RegistryEvent
from contracts.matches import (
    MATCHES_DUPLICATE_WINDOW_S,
    MATCHES_MAX_AGE_S,
    MATCHES_STREAM,
    MATCHES_SUBJECTS,
    match_event_id,
    match_subject,
)
from contracts.models import Design
from services.common import nats as nats_util
from services.common.faults import crash_point
from services.matcher.checkpoint import Change, Checkpoint, Loaded
from services.matcher.diff import Transition, apply_design, apply_facility
from services.matcher.index import CapabilityIndex
from services.matcher.metrics import MatcherMetrics
from services.matcher.profiles import DesignProfile, design_profile, facility_profile

log = logging.getLogger(__name__)
EVENTS = TypeAdapter(RegistryEvent)
PUBLISH_WINDOW = 2000  # match events in flight before waiting for their acks


def matches_stream(replicas: int) -> StreamConfig:
    return StreamConfig(name=MATCHES_STREAM, subjects=[MATCHES_SUBJECTS],
                        storage=StorageType.FILE, duplicate_window=MATCHES_DUPLICATE_WINDOW_S,
                        max_age=MATCHES_MAX_AGE_S, num_replicas=replicas)


class MatcherWorker:
    def __init__(self, nc: Client, index: CapabilityIndex, metrics: MatcherMetrics, *,
                 bucket: str, durable: str, filter_subjects: list[str], batch: int = 256,
                 replicas: int = 1) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.index, self.metrics = index, metrics
        self.checkpoint = Checkpoint(self.js, bucket, replicas)
        self.durable, self.filter_subjects = durable, filter_subjects
        self.batch, self.replicas = batch, replicas
        self.position = 0
        self.ready = asyncio.Event()

    # start-up

    async def start(self) -> None:
        started = time.perf_counter()
        await nats_util.ensure_stream(self.nc, matches_stream(self.replicas))
        await self.checkpoint.open()
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
        for kind, entity_id, version, profile in loaded.entities:
            self.index.versions[(kind, entity_id)] = version
            if profile is None:
                continue
            if isinstance(profile, DesignProfile):
                self.index.put_design(profile)
            else:
                self.index.put_facility(profile)

    async def _replay(self, pending: list[Change]) -> None:
        """Put the index back as it was before the batch, then apply the batch again."""
        for change in reversed(pending):
            self._set(change.kind, change.entity_id, change.old)
            self.index.versions[(change.kind, change.entity_id)] = (
                change.old.version if change.old else 0)
        log.info("replaying an interrupted batch", extra={"count": len(pending)})
        await self._apply_and_publish(pending)

    def _set(self, kind: str, entity_id: str, profile: Any) -> None:
        if kind == "design":
            self.index.remove_design(entity_id)
            if profile is not None:
                self.index.put_design(profile)
        else:
            self.index.remove_facility(entity_id)
            if profile is not None:
                self.index.put_facility(profile)

    async def _build_from_registry(self) -> None:
        """No checkpoint: index the stream's content as it is, emitting nothing."""
        try:
            info = await self.js.stream_info(REGISTRY_STREAM)
        except NotFoundError:
            await self.checkpoint.reset(0, [])
            return
        last = info.state.last_seq
        if info.state.messages:
            sub = await self.js.subscribe(REGISTRY_SUBJECTS, stream=REGISTRY_STREAM,
                                          ordered_consumer=True,
                                          deliver_policy=DeliverPolicy.ALL)
            try:
                while True:
                    msg = await sub.next_msg(timeout=10)
                    seq = msg.metadata.sequence.stream
                    if self._wanted(msg.subject):
                        change = self._change(seq, msg.data)
                        if change is not None:
                            self._set(change.kind, change.entity_id, change.new)
                            self.index.versions[(change.kind, change.entity_id)] = change.version
                    if seq >= last:
                        break
            finally:
                await sub.unsubscribe()
        self.position = last
        entities = [("design", d.id, d.version, d) for d in self.index.designs.values()]
        entities += [("facility", f.id, f.version, f) for f in self.index.facilities.values()]
        await self.checkpoint.reset(last, entities)
        log.info("index built from REGISTRY", extra={"count": len(entities)})

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
        while True:
            try:
                msgs = await self.subscription.fetch(self.batch, timeout=1)
            except TimeoutError:
                await self._observe_lag()
                continue
            try:
                await self.handle(msgs)
            except Exception:
                self.metrics.errors.inc()
                log.exception("batch failed; it will be redelivered")
                for msg in msgs:
                    await msg.nak(delay=1)
                raise  # the index may be half-updated: restart from the checkpoint

    async def handle(self, msgs: list[Msg]) -> None:
        changes = []
        in_batch: dict[tuple[str, str], Any] = {}
        for msg in msgs:
            change = self._change(msg.metadata.sequence.stream, msg.data, in_batch)
            if change is not None:
                changes.append(change)
        self.metrics.consumed.inc(len(msgs))
        if changes:
            await self._apply_and_publish(changes)
        last = max(m.metadata.sequence.stream for m in msgs)
        if not changes and last > self.position:
            await self.checkpoint.commit([], last)
        self.position = max(self.position, last)
        for msg in msgs:
            await msg.ack()

    def _change(self, seq: int, data: bytes,
                in_batch: dict[tuple[str, str], Any] | None = None) -> Change | None:
        """The change a REGISTRY message makes, or None when it is already applied.
        `in_batch` holds the state earlier changes of the same batch leave an entity in."""
        event = EVENTS.validate_json(data)
        kind = event.type.split(".", 1)[0]
        key = (kind, event.entity_id)
        if self.index.versions.get(key, 0) >= event.version:
            return None
        in_batch = {} if in_batch is None else in_batch
        if key in in_batch:
            old = in_batch[key]
        else:
            old = (self.index.designs if kind == "design" else self.index.facilities).get(
                event.entity_id)
        new = None
        if event.data is not None:
            new = (design_profile(event.data, event.version) if isinstance(event.data, Design)
                   else facility_profile(event.data, event.version))
        # Mark it applied now, so a second message for the same version in this batch is
        # skipped too; the index itself changes in _apply_and_publish.
        self.index.versions[key] = event.version
        in_batch[key] = new
        return Change(seq, kind, event.entity_id, event.version, old, new, str(event.event_id),
                      event.occurred_at.isoformat())

    async def _apply_and_publish(self, changes: list[Change]) -> None:
        await self.checkpoint.begin(changes)
        crash_point("matcher.after_begin")
        events: list[Outgoing] = []
        for change in changes:
            started = time.perf_counter()
            apply = apply_design if change.kind == "design" else apply_facility
            transitions = apply(self.index, change.entity_id, change.new,  # type: ignore[arg-type]
                                change.version)
            self.metrics.change_seconds.observe(time.perf_counter() - started)
            events.extend(self._event(t, change) for t in transitions)
        await self._publish(events)
        crash_point("matcher.after_publish")
        await self.checkpoint.commit(changes, max(c.seq for c in changes))
        self.position = max(self.position, max(c.seq for c in changes))
        self.metrics.observe_index(self.index)

    def _event(self, t: Transition, change: Change) -> Outgoing:
        gone = change.old if change.new is None else None  # a deleted entity's last state
        facility = self.index.facilities.get(t.facility_id) or (
            gone if change.kind == "facility" else None)
        design = self.index.designs.get(t.design_id) or (
            gone if change.kind == "design" else None)
        return match_message(t, change, facility, design)

    async def _publish(self, events: list[Outgoing]) -> None:
        """Pipelined: a window of publishes in flight, then their acks, then the next."""
        window = min(PUBLISH_WINDOW, max(1, (len(events) + 1) // 2))
        for start in range(0, len(events), window):
            futures = [await self.js.publish_async(e.subject, e.payload,
                                                   headers={"Nats-Msg-Id": e.event_id})
                       for e in events[start:start + window]]
            await asyncio.wait_for(asyncio.gather(*futures), 30)
            if start == 0 and window < len(events):
                crash_point("matcher.mid_publish")
        found = sum(1 for e in events if e.kind == "found")
        self.metrics.found.inc(found)
        self.metrics.withdrawn.inc(len(events) - found)

    async def _observe_lag(self) -> None:
        try:
            info = await self.subscription.consumer_info()
            self.metrics.pending.set(info.num_pending + (info.num_ack_pending or 0))
        except Exception as exc:
            log.debug("consumer info failed", extra={"error": repr(exc)})


class Outgoing(NamedTuple):
    kind: str
    subject: str
    event_id: str
    payload: bytes


def match_message(t: Transition, change: Change, facility: Any, design: Any) -> Outgoing:
    """A MatchEvent (contracts.matches) as bytes. Written as a dict: a fan-out makes
    thousands, and building pydantic models for each costs more than the matching."""
    event_id = match_event_id(t.kind, t.design_id, t.design_version, t.facility_id,
                              t.facility_version)
    body = {
        "schema_version": 1, "event_id": event_id, "type": f"matches.{t.kind}",
        "design_id": t.design_id, "design_version": t.design_version,
        "facility_id": t.facility_id, "facility_version": t.facility_version,
        "score": t.evaluation.score if t.kind == "found" else 0.0,
        "explanation": [r.as_dict() for r in t.evaluation.requirements],
        "facility_lat": getattr(facility, "lat", None),
        "facility_lon": getattr(facility, "lon", None),
        "design_processes": [n.id for n in getattr(design, "processes", ())],
        "cause": {"entity": change.kind, "entity_id": change.entity_id,
                  "version": change.version, "event_id": change.cause_event_id,
                  "occurred_at": change.occurred_at},
    }
    return Outgoing(t.kind, match_subject(t.kind, t.design_id, t.facility_id),  # type: ignore[arg-type]
                    event_id, json.dumps(body, separators=(",", ":")).encode())


def _subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)
