"""The matcher's checkpoint in a JetStream KV bucket (one per partition): every indexed
entity's profile and version, the REGISTRY position applied, and a write-ahead record of
the batch being applied.

Why a write-ahead record: REGISTRY keeps only the latest message per entity, so after a
crash mid-batch the versions in flight may be gone from the stream. The record keeps each
change's old and new profile; on restart the batch is applied again from it, which emits
the same transitions with the same event ids (JetStream drops the copies), and only then
does consumption go on."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from services.matcher.profiles import (
    DesignProfile,
    FacilityProfile,
    dump_design,
    dump_facility,
    load_profile,
)

POSITION, PENDING = "position", "pending"
Profile = DesignProfile | FacilityProfile


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
    entities: list[tuple[str, str, int, Profile | None]]  # kind, id, version, profile
    pending: list[Change]


def _dump(profile: Profile | None) -> list[Any] | None:
    if profile is None:
        return None
    return dump_design(profile) if isinstance(profile, DesignProfile) else dump_facility(profile)


def entity_key(kind: str, entity_id: str) -> str:
    return f"e.{kind[0]}.{entity_id}"


class Checkpoint:
    def __init__(self, js: JetStreamContext, bucket: str, replicas: int = 1) -> None:
        self.js, self.bucket, self.replicas = js, bucket, replicas
        self.prefix = f"$KV.{bucket}."

    async def open(self) -> None:
        try:
            await self.js.key_value(self.bucket)
        except BucketNotFoundError:
            await self.js.create_key_value(KeyValueConfig(
                bucket=self.bucket, history=1, storage=StorageType.FILE,
                replicas=self.replicas))

    async def load(self) -> Loaded | None:
        """The checkpoint, or None when there is none (a first start)."""
        kv = await self.js.key_value(self.bucket)
        try:
            position = int((await kv.get(POSITION)).value or b"0")
        except KeyNotFoundError:
            return None
        entities: list[tuple[str, str, int, Profile | None]] = []
        pending: list[Change] = []
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:
                break
            if entry.key.startswith("e.") and entry.value:
                kind, entity_id, version, profile = json.loads(entry.value)
                entities.append((kind, entity_id, version, profile and load_profile(profile)))
            elif entry.key == PENDING and entry.value:
                pending = [Change.load(c) for c in json.loads(entry.value)]
        await watcher.stop()
        return Loaded(position, entities, pending)

    async def begin(self, changes: list[Change]) -> None:
        await self.js.publish(self.prefix + PENDING,
                              json.dumps([c.dump() for c in changes]).encode())

    async def commit(self, changes: list[Change], position: int) -> None:
        """Record the entities' new state, then the position, then clear the record."""
        await self.put_entities((c.kind, c.entity_id, c.version, c.new) for c in changes)
        await self.js.publish(self.prefix + POSITION, str(position).encode())
        await self.js.publish(self.prefix + PENDING, b"")

    async def put_entities(self, entities: Any) -> None:
        futures = []
        for kind, entity_id, version, profile in entities:
            value = json.dumps([kind, entity_id, version, _dump(profile)]).encode()
            futures.append(await self.js.publish_async(
                self.prefix + entity_key(kind, entity_id), value))
            if len(futures) >= 2000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)

    async def reset(self, position: int, entities: Any) -> None:
        """A whole new checkpoint (after building the index from REGISTRY)."""
        await self.put_entities(entities)
        await self.js.publish(self.prefix + PENDING, b"")
        await self.js.publish(self.prefix + POSITION, str(position).encode())
