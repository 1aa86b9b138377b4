"""The matcher's checkpoint (one per partition): every indexed entity's profile and
version, the REGISTRY position applied, and a write-ahead record of the batch being applied.

Layout: a snapshot of every profile as one compressed object in a JetStream Object Store
(`<bucket>-snap`), and in the KV bucket `<bucket>`: `snapshot` (which object is current),
`position`, and `b.<first seq>` for each batch applied since: its changes, each with the
old and the new profile. A batch record is written before the batch's match events are
published (the write-ahead record) and `position` after: a record at or below the position
is committed, and its new profiles are deltas over the snapshot; one above it is the batch
that was in flight. So a batch costs two KV writes, whatever its size. A start reads one
object and the batch records; every `snapshot_every` changes the matcher writes a new
snapshot, points to it, and purges the records it covers. A crash between those steps
leaves records the snapshot already holds: loading keeps, per entity, the highest version,
so they change nothing.

Why a write-ahead record: REGISTRY keeps only the latest message per entity, so after a
crash mid-batch the versions in flight may be gone from the stream. The record keeps each
change's old and new profile; on restart the batch is applied again from it, which emits
the same transitions with the same event ids (JetStream drops the copies), and only then
does consumption go on.

Replays after long outages: JetStream drops a repeated Nats-Msg-Id only within its
duplicate window (20 min). So each batch record also holds the MATCHES sequence before its
first piece (`matches_seq`): a replay reads the MATCHES messages after it and publishes only
the pieces that are not there, however long the matcher was down.

Dead letters: a REGISTRY message that is not a registry event is parked as
`parked.<stream seq>` (its subject, why, and its first 64 KB), which snapshots keep."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
from nats.js.api import DeliverPolicy, KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from contracts.events import EntityKind
from services.matcher.profiles import (
    DesignProfile,
    dump_design,
    dump_facility,
    load_profile,
)
from services.matcher.snapshot import Entity, Profile, decode, encode

log = logging.getLogger(__name__)
POSITION, SNAPSHOT, BATCH = "position", "snapshot", "b."
PARKED = "parked."
PARKED_KEEP = 64 * 1024  # bytes of a parked message kept for the operator
RECORD_BYTES = 256 * 1024  # a KV value; NATS refuses messages over 1 MB by default
LEGACY_DELTA, LEGACY_PENDING = "e.", "pending"  # the layout before batch records: still read
SAME = "same"  # a change's old profile, written as its new one at another version and place


@dataclass
class Change:
    """One registry change as applied: enough to apply it again without the stream."""

    seq: int
    kind: EntityKind
    entity_id: str
    version: int
    old: Profile | None
    new: Profile | None
    cause_event_id: str | None
    occurred_at: str | None

    def dump(self) -> list[Any]:
        return [self.seq, self.kind, self.entity_id, self.version, self._dump_old(),
                _dump(self.new), self.cause_event_id, self.occurred_at]

    def _dump_old(self) -> list[Any] | None:
        """Most changes (a rename, a new description) leave what matching reads as it
        was: then the old profile is the new one at another version and place, and is
        written as just those (its full form would double the record)."""
        old, new = self.old, self.new
        if old is None or new is None or not new.same_for_matching(old):  # type: ignore[arg-type]
            return _dump(old)
        if isinstance(old, DesignProfile):
            return [SAME, old.version]
        return [SAME, old.version, old.lat, old.lon]  # type: ignore[union-attr]

    @classmethod
    def load(cls, data: list[Any]) -> Change:
        seq, kind, entity_id, version, old, new, event_id, occurred = data
        new_profile = new and load_profile(new)
        if old and old[0] == SAME:
            old_profile = replace(new_profile, version=old[1],  # type: ignore[type-var]
                                  **({"lat": old[2], "lon": old[3]} if len(old) > 2 else {}))
        else:
            old_profile = old and load_profile(old)
        return cls(seq, EntityKind(kind), entity_id, version, old_profile, new_profile, event_id,
                   occurred)


@dataclass
class Loaded:
    position: int
    entities: list[Entity]
    pending: list[Change]
    # the MATCHES sequence before the pending batch's first piece; None: not recorded (a
    # record of the previous layout), or nothing pending
    matches_after: int | None = None


def _pieces(changes: list[Change], limit: int) -> Iterator[tuple[int, list[bytes]]]:
    """(first seq, records) of the changes, grouped into pieces of at most `limit` bytes
    (or one record, if a record alone is larger)."""
    piece: list[bytes] = []
    size = first_seq = 0
    for change in changes:
        record = orjson.dumps(change.dump())
        if piece and size + len(record) > limit:
            yield first_seq, piece
            piece, size = [], 0
        if not piece:
            first_seq = change.seq
        piece.append(record)
        size += len(record) + 1
    if piece:
        yield first_seq, piece


def _dump(profile: Profile | None) -> list[Any] | None:
    if profile is None:
        return None
    return dump_design(profile) if isinstance(profile, DesignProfile) else dump_facility(profile)


def _load_entity(data: list[Any]) -> Entity:
    kind, entity_id, version, profile = data
    return kind, entity_id, version, profile and load_profile(profile)


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
        batches: list[Change] = []
        legacy_pending: list[Change] = []
        matches_after: dict[int, int | None] = {}  # first seq of a record: its matches_seq
        self.deltas = 0
        async for key, value in self._entries():
            if key.startswith(BATCH):
                record = orjson.loads(value)
                if isinstance(record, list):  # the layout before matches_seq
                    record = {"changes": record, "matches_seq": None}
                changes = [Change.load(c) for c in record["changes"]]
                batches.extend(changes)
                if changes:
                    matches_after[changes[0].seq] = record["matches_seq"]
            elif key.startswith(LEGACY_DELTA):
                self._keep_latest(latest, _load_entity(orjson.loads(value)))
            elif key == LEGACY_PENDING:
                legacy_pending = [Change.load(c) for c in orjson.loads(value)]
        pending = [c for c in batches if c.seq > position] or legacy_pending
        for c in batches:
            if c.seq <= position:
                self._keep_latest(latest, (c.kind, c.entity_id, c.version, c.new))
        after = [matches_after[c.seq] for c in pending if c.seq in matches_after]
        known = [a for a in after if a is not None]
        return Loaded(position, list(latest.values()), pending,
                      min(known) if known and len(known) == len(after) else None)

    async def _entries(self) -> AsyncIterator[tuple[str, bytes]]:
        """(key, value) of every live entry, read to the bucket's last sequence as it was
        when reading began. Not nats-py's watchall(): it decides it has seen everything
        from a pending count taken as its consumer starts, which can read 0 and end the
        listing at once (seen under load): a checkpoint missing its records would lose
        the changes they hold."""
        stream = f"KV_{self.bucket}"
        state = (await self.js.stream_info(stream)).state
        if not state.messages:
            return
        last = state.last_seq
        sub = await self.js.subscribe(f"{self.prefix}>", stream=stream, ordered_consumer=True,
                                      deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
        try:
            while True:
                msg = await sub.next_msg(timeout=10)
                removed = (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE")
                if msg.data and not removed:
                    yield msg.subject[len(self.prefix):], msg.data
                if msg.metadata.sequence.stream >= last:
                    return
        finally:
            await sub.unsubscribe()

    def _keep_latest(self, latest: dict[tuple[str, str], Entity], entity: Entity) -> None:
        self.deltas += 1
        known = latest.get((entity[0], entity[1]))
        if known is None or known[2] < entity[2]:
            latest[(entity[0], entity[1])] = entity

    async def begin(self, changes: list[Change],
                    matches_seq: int | None = None) -> asyncio.Future[Any]:
        """Send the write-ahead record of a batch (also, once committed, its deltas), in
        pieces that stay well under NATS's largest message, with `matches_seq`: MATCHES'
        sequence before any of the batch's pieces. Returns the future of their
        acknowledgement: await it before anything the record must precede (the batch's
        match events)."""
        self.deltas += len(changes)
        sent = []
        head = b'{"matches_seq":%s,"changes":[' % orjson.dumps(matches_seq)
        for first_seq, piece in _pieces(changes, RECORD_BYTES):
            sent.append(await self.js.publish_async(f"{self.prefix}{BATCH}{first_seq}",
                                                    head + b",".join(piece) + b"]}"))
        return asyncio.ensure_future(asyncio.gather(*sent))

    async def commit(self, position: int) -> None:
        """Every batch record up to `position` is applied."""
        await self.js.publish(self.prefix + POSITION, str(position).encode())

    async def park(self, seq: int, subject: str, data: bytes, why: str) -> None:
        """Keep a REGISTRY message that is not a registry event, for the operator."""
        await self.js.publish(f"{self.prefix}{PARKED}{seq}", orjson.dumps({
            "seq": seq, "subject": subject, "error": why,
            "data": data[:PARKED_KEEP].decode("utf-8", "replace")}))

    @property
    def due(self) -> bool:
        return self.deltas >= self.snapshot_every

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
        for records in (f"{BATCH}>", f"{LEGACY_DELTA}>", LEGACY_PENDING):
            await self.js.purge_stream(kv_stream, subject=self.prefix + records, seq=covered)
        if previous and previous.decode() != name:
            try:
                await store.delete(previous.decode())
            except NotFoundError:
                pass
        self.deltas = 0
        log.info("checkpoint snapshot written",
                 extra={"position": position, "bytes": len(blob), "object": name})

    async def reset(self, position: int, entities: Iterable[Entity]) -> None:
        """A whole new checkpoint (after building the index from REGISTRY): the snapshot
        purges every batch record, so none can be taken for one in flight."""
        await self.snapshot(position, entities)
