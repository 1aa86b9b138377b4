"""Sets of small integers as Python ints, and the table that gives entities those integers.
Pure.

Why ints: the index intersects sets of up to 100,000s of facilities or designs for every
change. As bits of an int, an intersection is one C loop over 64-bit words (12.5 KB for
100,000 members, microseconds), where a set intersection hashes every member."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def positions(bits: int) -> list[int]:
    """The members, ascending. str.find skips the zero runs in C, so the cost is about
    one step per member, not per bit."""
    if not bits:
        return []
    text = bin(bits)[:1:-1]  # bit 0 first
    out, at = [], text.find("1")
    while at >= 0:
        out.append(at)
        at = text.find("1", at + 1)
    return out


def from_positions(members: Iterable[int] | np.ndarray, size: int = 0) -> int:
    """The set of these members (repeats allowed), built in one vectorised pass (bulk
    loads: one shift-and-or per member would copy the whole int each time)."""
    array = np.asarray(members if isinstance(members, np.ndarray) else list(members),
                       dtype=np.int64)
    if not len(array):
        return 0
    mask = np.zeros(max(size, int(array.max()) + 1), dtype=bool)
    mask[array] = True
    return int.from_bytes(np.packbits(mask, bitorder="little").tobytes(), "little")


Key = tuple  # ("p", "fdm"), ("box", "fdm", (3, 5, 7)): grouped by all but the last item


class Postings:
    """key -> set of slots, and the present keys grouped by their prefix (key[:-1]), so a
    query can walk, say, every box size stated for one process. Empty sets are dropped."""

    __slots__ = ("bits", "groups")

    def __init__(self) -> None:
        self.bits: dict[Key, int] = {}
        self.groups: dict[Key, set[Key]] = {}

    def get(self, key: Key) -> int:
        return self.bits.get(key, 0)

    def group(self, prefix: Key) -> Iterable[Key]:
        return self.groups.get(prefix, ())

    def add(self, keys: Iterable[Key], slot: int) -> None:
        bit = 1 << slot
        bits = self.bits
        for key in keys:
            old = bits.get(key)
            if old is None:
                self.groups.setdefault(key[:-1], set()).add(key)
                old = 0
            bits[key] = old | bit

    def remove(self, keys: Iterable[Key], slot: int) -> None:
        mask = ~(1 << slot)
        bits = self.bits
        for key in keys:
            left = bits.get(key, 0) & mask
            if left:
                bits[key] = left
            elif key in bits:
                del bits[key]
                group = self.groups[key[:-1]]
                group.discard(key)
                if not group:
                    del self.groups[key[:-1]]

    def load(self, keyed: dict[Key, list[int]]) -> None:
        """Replace everything with these members per key, in one pass per key."""
        self.bits = {key: from_positions(slots) for key, slots in keyed.items() if slots}
        self.groups = {}
        for key in self.bits:
            self.groups.setdefault(key[:-1], set()).add(key)

    def union(self, keys: Iterable[Key]) -> int:
        out = 0
        bits = self.bits
        for key in keys:
            out |= bits.get(key, 0)
        return out



class SlotTable:
    """Entity ids <-> dense slots; a freed slot is reused, so the sets stay as small as the
    number of live entities."""

    __slots__ = ("free", "ids", "slot_of")

    def __init__(self) -> None:
        self.slot_of: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.free: list[int] = []

    def __len__(self) -> int:
        return len(self.slot_of)

    def assign(self, entity_id: str) -> int:
        slot = self.slot_of.get(entity_id)
        if slot is not None:
            return slot
        if self.free:
            slot = self.free.pop()
            self.ids[slot] = entity_id
        else:
            slot = len(self.ids)
            self.ids.append(entity_id)
        self.slot_of[entity_id] = slot
        return slot

    def release(self, entity_id: str) -> int | None:
        slot = self.slot_of.pop(entity_id, None)
        if slot is not None:
            self.ids[slot] = None
            self.free.append(slot)
        return slot


def present(by_slot: list[T | None], bits: int) -> Iterator[T]:
    """What a slot list holds at the members' positions (a freed slot holds None)."""
    for slot in positions(bits):
        item = by_slot[slot]
        if item is not None:
            yield item
