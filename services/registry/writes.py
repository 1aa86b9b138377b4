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
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


@dataclass(frozen=True)
class Decision:
    version: int        # the version after the write
    changed: bool       # False: nothing to store, no event
    created: bool


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
