"""One live worker per matcher partition: a lease in the partition's KV bucket.

The key `lease` holds the owner's id and, for people reading it, when the lease runs out.
Every write is a compare-and-set on the key's revision (kv.create / kv.update(last=...)),
so of two processes writing at once only one wins. The holder renews it every heartbeat.
A standby takes it only after it has watched the same revision for a whole lease on its
own clock (or the holder released it): no clock is compared with another machine's.

The holder counts its lease from the moment it *sent* its last successful renewal, and
gives it up a heartbeat before that lease ends; a standby counts from the moment it *saw*
that renewal, which is later. So the holder has stopped before a standby can start."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

import orjson
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)
KEY = "lease"


class LeaseLost(Exception):
    """This process may no longer consume or publish for the partition."""


class Standby(Exception):
    """Another process holds the partition's lease; this one waits to take over."""


def new_owner_id() -> str:
    """Unique per process life: a restarted process is another owner."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(self, js: JetStreamContext, bucket: str, owner: str, lease_s: float,
                 heartbeat_s: float) -> None:
        self.js, self.bucket, self.owner = js, bucket, owner
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.revision: int | None = None
        self.valid_until = 0.0  # monotonic; 0: not held
        self.holder: str | None = None  # the owner last seen holding it, for readiness

    @property
    def _subject(self) -> str:  # the KV key's subject: which partition, in any log line
        return f"$KV.{self.bucket}.{KEY}"

    @property
    def held(self) -> bool:
        return self.revision is not None and time.monotonic() < self.valid_until

    def check(self) -> None:
        """Raise LeaseLost unless the lease is still ours: called before every write that
        only the partition's owner may make (records, MATCHES pieces, commits, acks), so
        that a worker whose heartbeat could not run (a long batch) stops on its own."""
        if not self.held:
            raise LeaseLost(f"lease on {self.bucket} lapsed or taken")

    def _value(self, released: bool = False) -> bytes:
        return orjson.dumps({"owner": None if released else self.owner,
                             "expires": 0 if released else time.time() + self.lease_s})

    def _granted(self, sent: float, revision: int) -> None:
        self.revision, self.holder = revision, self.owner
        self.valid_until = sent + self.lease_s - self.heartbeat_s

    async def acquire(self) -> None:
        """Return once the lease is ours; until then wait as standby."""
        kv = await self.js.key_value(self.bucket)
        seen: tuple[int, float] | None = None  # (revision, when first seen)
        while True:
            sent = time.monotonic()
            try:
                revision = await self._try(kv, seen)
            except KeyWrongLastSequenceError:
                revision = None  # another process wrote first: look again
            if revision is not None:
                self._granted(sent, revision)
                log.info("partition lease acquired", extra={"subject": self._subject})
                return
            try:
                entry = await kv.get(KEY)
                if seen is None or seen[0] != entry.revision:
                    seen = (entry.revision, time.monotonic())
            except KeyNotFoundError:
                seen = None
            await asyncio.sleep(min(self.heartbeat_s, 1.0))

    async def _try(self, kv: KeyValue, seen: tuple[int, float] | None) -> int | None:
        """The new revision if the lease could be taken now, else None."""
        try:
            entry = await kv.get(KEY)
        except KeyNotFoundError:  # never held, or deleted
            return await kv.create(KEY, self._value())
        holder = orjson.loads(entry.value or b"{}").get("owner")
        self.holder = holder
        lapsed = (seen is not None and seen[0] == entry.revision
                  and time.monotonic() - seen[1] >= self.lease_s)
        if holder in (None, self.owner) or lapsed:
            if holder not in (None, self.owner):
                log.warning("partition lease lapsed: taking over",
                            extra={"subject": self._subject, "error": f"held by {holder}"})
            return await kv.update(KEY, self._value(), last=entry.revision)
        return None

    async def keep(self) -> None:
        """Renew every heartbeat; raise LeaseLost once it is another's or has run out."""
        kv = await self.js.key_value(self.bucket)
        while True:
            await asyncio.sleep(self.heartbeat_s)
            sent = time.monotonic()
            try:
                revision = await asyncio.wait_for(
                    kv.update(KEY, self._value(), last=self.revision),
                    max(0.1, self.valid_until - sent))
            except KeyWrongLastSequenceError:
                self._lose("taken by another process")
            except (TimeoutError, NatsError) as exc:
                if not self.held:
                    self._lose(f"not renewed in time: {exc!r}")
                log.warning("partition lease renewal failed; retrying",
                            extra={"error": repr(exc)})
            else:
                self._granted(sent, revision)

    def _lose(self, why: str) -> None:
        self.revision, self.valid_until = None, 0.0
        log.error("partition lease lost: stopping",
                  extra={"subject": self._subject, "error": why})
        raise LeaseLost(why)

    async def release(self) -> None:
        """Hand the lease over at once (a clean stop), if it is still ours."""
        if self.revision is None:
            return
        kv = await self.js.key_value(self.bucket)
        try:
            await kv.update(KEY, self._value(released=True), last=self.revision)
        except KeyWrongLastSequenceError:
            pass  # already another's
        self.revision, self.valid_until = None, 0.0
