"""Every design's parts, by the processes that can make them and by their size as ladder
rungs: for each distinct size of a process group, the design slots with a part of that
size. Pure (numpy).

Why not posting lists: parts have hundreds of distinct sizes per process, so per-size
bitsets cost about 900 bytes per design (16,000 mostly sparse 12 KB ints at 100,000
designs), and a facility change walked thousands of them. Here a part costs 4 bytes, and
the question "which designs have a part that none of these machines takes?" is a
comparison of the machines with each distinct size (hundreds per group), then the slots
of the sizes that fail, gathered: work in proportion to the parts that do not fit, not to
every part (a facility with a big machine touches almost nothing)."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from contextlib import suppress

import numpy as np

from services.matcher.bitset import from_positions

Rungs = tuple[int, int, int]
Box = tuple[Rungs, Rungs]  # (rounded down: surely takes, rounded up: might take)
Part = tuple[tuple[str, ...], Rungs, Rungs]  # (processes, up, down)
_EMPTY = np.empty(0, dtype=np.int32)


class _Sizes:
    """One process group: its distinct (up, down) sizes as rows of two small arrays, and
    for each the slots of the designs with a part of that size (a slot repeats for each
    such part)."""

    __slots__ = ("key_down", "key_of", "key_up", "slots")
    key_up: np.ndarray
    key_down: np.ndarray

    def __init__(self) -> None:
        self.key_of: dict[tuple[Rungs, Rungs], int] = {}
        self.slots: list[array] = []
        self._arrays()

    def _key(self, up: Rungs, down: Rungs, compare: bool = True) -> int:
        """The size's row; a new one also gets its comparison arrays rebuilt unless the
        caller (a bulk load) does that once at the end."""
        key = self.key_of.get((up, down))
        if key is None:  # a size this group has not seen: rare once loaded
            key = self.key_of[(up, down)] = len(self.key_of)
            self.slots.append(array("i"))
            if compare:
                self._arrays()
        return key

    def _arrays(self) -> None:
        self.key_up = np.array([k[0] for k in self.key_of], dtype=np.int8).reshape(-1, 3)
        self.key_down = np.array([k[1] for k in self.key_of], dtype=np.int8).reshape(-1, 3)

    def add(self, slot: int, up: Rungs, down: Rungs) -> None:
        self.slots[self._key(up, down)].append(slot)

    def remove(self, slot: int, up: Rungs, down: Rungs) -> None:
        key = self.key_of.get((up, down))
        if key is not None:
            with suppress(ValueError):  # not there: removing is idempotent
                self.slots[key].remove(slot)

    def live(self) -> int:
        return sum(len(s) for s in self.slots)

    def classify(self, boxes: Iterable[Box]) -> tuple[np.ndarray, np.ndarray]:
        """(slots with a part no box can take, slots with a part only the exact rule can
        decide), either possibly with repeats."""
        surely = np.zeros(len(self.key_of), dtype=bool)
        maybe = np.zeros(len(self.key_of), dtype=bool)
        for sure_box, maybe_box in boxes:
            surely |= (self.key_up <= np.asarray(sure_box, dtype=np.int8)).all(axis=1)
            maybe |= (self.key_down <= np.asarray(maybe_box, dtype=np.int8)).all(axis=1)
        return self._gather(np.flatnonzero(~maybe)), self._gather(np.flatnonzero(maybe & ~surely))

    def _gather(self, keys: np.ndarray) -> np.ndarray:
        out = array("i")
        for k in keys.tolist():
            out.extend(self.slots[k])  # a memcpy each: cheaper than one numpy view each
        return np.frombuffer(out, dtype=np.int32) if out else _EMPTY


class PartTable:
    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], _Sizes] = {}

    def __len__(self) -> int:
        return sum(c.live() for c in self.groups.values())

    def load(self, rows: Iterable[tuple[int, tuple[str, ...], Rungs, Rungs]]) -> None:
        """(slot, processes, up, down) for every part, into an empty table."""
        for slot, processes, up, down in rows:
            sizes = self.groups.get(processes)
            if sizes is None:
                sizes = self.groups[processes] = _Sizes()
            sizes.slots[sizes._key(up, down, compare=False)].append(slot)
        for sizes in self.groups.values():
            sizes._arrays()

    def add(self, slot: int, parts: Iterable[Part]) -> None:
        for processes, up, down in parts:
            sizes = self.groups.get(processes)
            if sizes is None:
                sizes = self.groups[processes] = _Sizes()
            sizes.add(slot, up, down)

    def remove(self, slot: int, parts: Iterable[Part]) -> None:
        """The design's parts as they were added."""
        for processes, up, down in parts:
            sizes = self.groups.get(processes)
            if sizes is not None:
                sizes.remove(slot, up, down)

    def size_filter(self, machines: Mapping[str, set[Box]], slots: int) -> tuple[int, int]:
        """(designs a part of which surely fits none of these machines, designs the exact
        rule must decide) as bitsets over `slots` design slots. A group none of whose
        processes has a sized machine here is skipped: its size is unknown, not unmet."""
        excluded, unsure = [], []
        for processes, sizes in self.groups.items():
            boxes = set().union(*(machines.get(q, ()) for q in processes))
            if boxes:
                out, maybe = sizes.classify(boxes)
                excluded.append(out)
                unsure.append(maybe)
        return _bits(excluded, slots), _bits(unsure, slots)


def _bits(parts: list[np.ndarray], slots: int) -> int:
    return from_positions(np.concatenate(parts) if parts else _EMPTY, slots)
