"""The matcher's checkpoint (one per partition): every indexed entity's profile and
version, the REGISTRY position applied, and a write-ahead record of the batch being applied.

Layout: a snapshot of every profile as one compressed object in a JetStream Object Store
(`<bucket>-snap`), and in the KV bucket `<bucket>`: `snapshot` (which object is current),
`e.<kind>.<id>` for each entity changed since (a delta), `position` and `pending`. A start
reads one object and a few deltas instead of one KV entry per entity; every
`snapshot_every` deltas the matcher writes a new snapshot, points to it, and purges the
deltas it covers. A crash between those steps leaves deltas the snapshot already holds:
loading keeps, per entity, the highest version, so they change nothing.

Why a write-ahead record: REGISTRY keeps only the latest message per entity, so after a
crash mid-batch the versions in flight may be gone from the stream. The record keeps each
change's old and new profile; on restart the batch is applied again from it, which emits
the same transitions with the same event ids (JetStream drops the copies), and only then
does consumption go on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from services.matcher.profiles import (
    DesignProfile,
    dump_design,
    dump_facility,
    load_profile,
)
from services.matcher.snapshot import Entity, Profile, decode, encode

log = logging.getLogger(__name__)
POSITION, PENDING, SNAPSHOT = "position", "pending", "snapshot"


@dataclass
class Change:
    """One registry change as applied: enough to apply it again without the stream."""

    seq: int
    kind: str  # "design" | "facility"
    entity_id: str
    version: int
    old: Profile | None
    new: Profile | None
    cause_event_id: str | None
    occurred_at: str | None

    def dump(self) -> list[Any]:
        return [self.seq, self.kind, self.entity_id, self.version, _dump(self.old),
                _dump(self.new), self.cause_event_id, self.occurred_at]

    @classmethod
    def load(cls, data: list[Any]) -> Change:
        seq, kind, entity_id, version, old, new, event_id, occurred = data
        return cls(seq, kind, entity_id, version, old and load_profile(old),
                   new and load_profile(new), event_id, occurred)


@dataclass
class Loaded:
    position: int
    entities: list[Entity]
    pending: list[Change]


def _dump(profile: Profile | None) -> list[Any] | None:
    if profile is None:
        return None
    return dump_design(profile) if isinstance(profile, DesignProfile) else dump_facility(profile)


def _dump_entity(entity: Entity) -> list[Any]:
    kind, entity_id, version, profile = entity
    return [kind, entity_id, version, _dump(profile)]


def _load_entity(data: list[Any]) -> Entity:
    kind, entity_id, version, profile = data
    return kind, entity_id, version, profile and load_profile(profile)


def entity_key(kind: str, entity_id: str) -> str:
    return f"e.{kind[0]}.{entity_id}"


class Checkpoint:
    def __init__(self, js: JetStreamContext, bucket: str, replicas: int = 1,
                 snapshot_every: int = 50_000) -> None:
        self.js, self.bucket, self.replicas = js, bucket, replicas
        self.objects = f"{bucket}-snap"
        self.prefix = f"$KV.{bucket}."
        self.snapshot_every = snapshot_every
        self.deltas = 0  # written since the current snapshot

    async def open(self) -> None:
        try:
            await self.js.key_value(self.bucket)
        except BucketNotFoundError:
            await self.js.create_key_value(KeyValueConfig(
                bucket=self.bucket, history=1, storage=StorageType.FILE,
                replicas=self.replicas))
        try:
            await self.js.object_store(self.objects)
        except (BucketNotFoundError, NotFoundError):
            await self.js.create_object_store(self.objects, ObjectStoreConfig(
                storage=StorageType.FILE, replicas=self.replicas))

    async def load(self) -> Loaded | None:
        """The checkpoint, or None when there is none (a first start)."""
        kv = await self.js.key_value(self.bucket)
        try:
            position = int((await kv.get(POSITION)).value or b"0")
        except KeyNotFoundError:
            return None
        latest: dict[tuple[str, str], Entity] = {}
        try:
            name = (await kv.get(SNAPSHOT)).value
        except KeyNotFoundError:
            name = None
        if name:
            store = await self.js.object_store(self.objects)
            blob = (await store.get(name.decode())).data
            latest = {(entity[0], entity[1]): entity for entity in decode(blob)}
        pending: list[Change] = []
        self.deltas = 0
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:
                break
            if entry.key.startswith("e.") and entry.value:
                self.deltas += 1
                entity = _load_entity(orjson.loads(entry.value))
                known = latest.get((entity[0], entity[1]))
                if known is None or known[2] < entity[2]:
                    latest[(entity[0], entity[1])] = entity
            elif entry.key == PENDING and entry.value:
                pending = [Change.load(c) for c in orjson.loads(entry.value)]
        await watcher.stop()
        return Loaded(position, list(latest.values()), pending)

    async def begin(self, changes: list[Change]) -> None:
        await self.js.publish(self.prefix + PENDING, orjson.dumps([c.dump() for c in changes]))

    async def commit(self, changes: list[Change], position: int) -> None:
        """Record the entities' new state, then the position, then clear the record."""
        await self._put_deltas((c.kind, c.entity_id, c.version, c.new) for c in changes)
        await self.js.publish(self.prefix + POSITION, str(position).encode())
        await self.js.publish(self.prefix + PENDING, b"")

    @property
    def due(self) -> bool:
        return self.deltas >= self.snapshot_every

    async def _put_deltas(self, entities: Iterable[Entity]) -> None:
        futures = []
        for entity in entities:
            self.deltas += 1
            futures.append(await self.js.publish_async(
                self.prefix + entity_key(entity[0], entity[1]), orjson.dumps(
                    _dump_entity(entity))))
            if len(futures) >= 2000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)

    async def snapshot(self, position: int, entities: Iterable[Entity]) -> None:
        """Write every entity as a new snapshot, make it current, drop what it covers.
        The caller holds the index still (no batch in flight) while `entities` is read."""
        kv_stream = f"KV_{self.bucket}"
        covered = (await self.js.stream_info(kv_stream)).state.last_seq + 1
        blob = encode(entities)
        kv = await self.js.key_value(self.bucket)
        try:
            previous = (await kv.get(SNAPSHOT)).value
        except KeyNotFoundError:
            previous = None
        name = f"snapshot-{position}-{covered}"
        store = await self.js.object_store(self.objects)
        await store.put(name, blob)
        await kv.put(SNAPSHOT, name.encode())
        await kv.put(POSITION, str(position).encode())
        await self.js.purge_stream(kv_stream, subject=self.prefix + "e.>", seq=covered)
        if previous and previous.decode() != name:
            try:
                await store.delete(previous.decode())
            except NotFoundError:
                pass
        self.deltas = 0
        log.info("checkpoint snapshot written",
                 extra={"position": position, "bytes": len(blob), "object": name})

    async def reset(self, position: int, entities: Iterable[Entity]) -> None:
        """A whole new checkpoint (after building the index from REGISTRY)."""
        await self.js.publish(self.prefix + PENDING, b"")
        await self.snapshot(position, entities)
