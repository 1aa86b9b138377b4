"""Whether a write may happen, and what version it makes. Pure: the store reads the current
row under lock, asks here, and writes what this decides."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class WriteMode(StrEnum):
    create = "create"   # POST: the id must be free (or a tombstone of the same owner)
    replace = "replace"  # PUT: If-Match names the version being replaced
    delete = "delete"


@dataclass(frozen=True)
class Current:
    owner: str
    version: int
    deleted: bool
    content_hash: str | None


class WriteRefused(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None, *,
                 limit: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.limit = limit  # the limit reached, when a size limit refused the write


@dataclass(frozen=True)
class Decision:
    version: int        # the version after the write
    changed: bool       # False: nothing to store, no event
    created: bool
    event_id: str | None = None  # the change's event, once queued: what `makelocal trace` takes


def decide(current: Current | None, *, mode: WriteMode, owner: str,
           expected_version: int | None, content_hash: str | None) -> Decision:
    live = current is not None and not current.deleted
    if current is not None and current.owner != owner:
        if live or mode is WriteMode.create:
            raise WriteRefused(403, "forbidden", "this entity belongs to another organization")
    if mode is WriteMode.create:
        if live:
            assert current is not None
            if current.content_hash == content_hash:
                return Decision(current.version, changed=False, created=False)
            raise WriteRefused(409, "exists", "an entity with this id exists; PUT with If-Match "
                               "to change it", "id")
        return Decision((current.version + 1) if current else 1, changed=True, created=True)
    if not live:
        raise WriteRefused(404, "not_found", "no such entity")
    assert current is not None
    if expected_version is None:
        if mode is WriteMode.replace:
            raise WriteRefused(428, "precondition_required",
                               "If-Match with the current ETag is required", "If-Match")
    elif expected_version != current.version:
        raise WriteRefused(412, "precondition_failed",
                           f"version {expected_version} is stale; current is {current.version}",
                           "If-Match")
    if mode is WriteMode.replace and current.content_hash == content_hash:
        return Decision(current.version, changed=False, created=False)
    return Decision(current.version + 1, changed=True, created=False)


# Room left in each NATS message for its headers (Nats-Msg-Id is about 60 bytes): the
# server counts headers and payload together against its max_payload.
EVENT_HEADROOM_BYTES = 1024
# The server's max_payload when it is not (yet) known: nats-server's default, 1 MiB.
DEFAULT_MAX_PAYLOAD = 1024 * 1024


def event_limit(max_payload: int, configured: int | None = None) -> int:
    """The largest REGISTRY event payload a NATS server with `max_payload` takes, or
    `configured` when that is smaller."""
    fits = max_payload - EVENT_HEADROOM_BYTES
    return fits if configured is None else min(fits, configured)


def check_event_size(size: int, limit: int) -> None:
    """Refuse a change whose event could never be published: stored, it would be parked
    by the relay and no consumer would ever hear of it."""
    if size > limit:
        raise WriteRefused(413, "event_too_large",
                           f"this document's change event would be {size:,} bytes; events"
                           f" are limited to {limit:,} bytes (the NATS server's max_payload"
                           " less room for headers): make the document smaller (fewer or"
                           " shorter parts, descriptions, lists)", "body", limit=limit)
