"""Every design's parts, by the processes that can make them, as columns of small
integers: the design's slot and the part's sides as ladder rungs. Pure (numpy).

Why not posting lists: parts have hundreds of distinct sizes per process, so per-size
bitsets cost about 900 bytes per design (16,000 mostly sparse 12 KB ints at 100,000
designs), and a facility change walked thousands of them. Here a part costs 11 bytes and
the question "which designs have a part that none of these machines takes?" is a
comparison of the machines with each distinct size (hundreds per group), then one lookup
per part, vectorised."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from services.matcher.bitset import from_positions

Rungs = tuple[int, int, int]
Box = tuple[Rungs, Rungs]  # (rounded down: surely takes, rounded up: might take)
_EMPTY = np.empty(0, dtype=np.int32)


class _Columns:
    """One process group's parts: per row the design's slot (-1: removed, row reusable)
    and an index into the group's distinct sizes, so that a facility's machines are
    compared with each distinct size once, not with every part."""

    __slots__ = ("free", "key", "key_down", "key_of", "key_up", "n", "slot")
    key_up: np.ndarray
    key_down: np.ndarray

    def __init__(self, slots: list[int], ups: list[Rungs], downs: list[Rungs]) -> None:
        self.key_of: dict[tuple[Rungs, Rungs], int] = {}
        keys = [self.key_of.setdefault(pair, len(self.key_of))
                for pair in zip(ups, downs, strict=True)]
        self._arrays()
        size = max(16, len(slots))
        self.slot = np.full(size, -1, dtype=np.int32)
        self.key = np.zeros(size, dtype=np.int32)
        self.n = len(slots)
        if slots:
            self.slot[: self.n] = slots
            self.key[: self.n] = keys
        self.free: list[int] = []

    def _key(self, up: Rungs, down: Rungs) -> int:
        key = self.key_of.get((up, down))
        if key is None:  # a size this group has not seen: rare once loaded
            key = self.key_of[(up, down)] = len(self.key_of)
            self._arrays()
        return key

    def _arrays(self) -> None:
        self.key_up = np.array([k[0] for k in self.key_of], dtype=np.int8).reshape(-1, 3)
        self.key_down = np.array([k[1] for k in self.key_of], dtype=np.int8).reshape(-1, 3)

    def add(self, slot: int, up: Rungs, down: Rungs) -> None:
        key = self._key(up, down)
        if self.free:
            row = self.free.pop()
        else:
            if self.n == len(self.slot):
                self._grow()
            row, self.n = self.n, self.n + 1
        self.slot[row], self.key[row] = slot, key

    def _grow(self) -> None:
        size = 2 * len(self.slot)
        slot = np.full(size, -1, dtype=np.int32)
        key = np.zeros(size, dtype=np.int32)
        slot[: self.n], key[: self.n] = self.slot[: self.n], self.key[: self.n]
        self.slot, self.key = slot, key

    def remove(self, slot: int) -> None:
        rows = np.flatnonzero(self.slot[: self.n] == slot)
        self.slot[rows] = -1
        self.free.extend(rows.tolist())

    def live(self) -> int:
        return self.n - len(self.free)

    def classify(self, boxes: Iterable[Box]) -> tuple[np.ndarray, np.ndarray]:
        """(slots with a part no box can take, slots with a part only the exact rule can
        decide), either possibly with repeats."""
        surely = np.zeros(len(self.key_of), dtype=bool)
        maybe = np.zeros(len(self.key_of), dtype=bool)
        for sure_box, maybe_box in boxes:
            surely |= (self.key_up <= np.asarray(sure_box, dtype=np.int8)).all(axis=1)
            maybe |= (self.key_down <= np.asarray(maybe_box, dtype=np.int8)).all(axis=1)
        if surely.all():  # the machines surely take every size of this group
            return _EMPTY, _EMPTY
        # per distinct size: 0 surely fits, 1 unsure, 2 fits no machine
        verdict = np.where(maybe, np.where(surely, 0, 1), 2).astype(np.int8)
        n = self.n
        slot = self.slot[:n]
        per_row = verdict[self.key[:n]]
        live = slot >= 0
        return slot[live & (per_row == 2)], slot[live & (per_row == 1)]


class PartTable:
    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], _Columns] = {}

    def __len__(self) -> int:
        return sum(c.live() for c in self.groups.values())

    def load(self, rows: Iterable[tuple[int, tuple[str, ...], Rungs, Rungs]]) -> None:
        """(slot, processes, up, down) for every part, into an empty table."""
        gathered: dict[tuple[str, ...], tuple[list[int], list[Rungs], list[Rungs]]] = {}
        for slot, processes, up, down in rows:
            slots, ups, downs = gathered.setdefault(processes, ([], [], []))
            slots.append(slot)
            ups.append(up)
            downs.append(down)
        self.groups = {g: _Columns(*columns) for g, columns in gathered.items()}

    def add(self, slot: int, parts: Iterable[tuple[tuple[str, ...], Rungs, Rungs]]) -> None:
        for processes, up, down in parts:
            columns = self.groups.get(processes)
            if columns is None:
                columns = self.groups[processes] = _Columns([], [], [])
            columns.add(slot, up, down)

    def remove(self, slot: int, groups: Iterable[tuple[str, ...]]) -> None:
        for processes in set(groups):
            columns = self.groups.get(processes)
            if columns is not None:
                columns.remove(slot)

    def size_filter(self, machines: Mapping[str, set[Box]], slots: int) -> tuple[int, int]:
        """(designs a part of which surely fits none of these machines, designs the exact
        rule must decide) as bitsets over `slots` design slots. A group none of whose
        processes has a sized machine here is skipped: its size is unknown, not unmet."""
        excluded, unsure = [], []
        for processes, columns in self.groups.items():
            boxes = set().union(*(machines.get(q, ()) for q in processes))
            if boxes:
                out, maybe = columns.classify(boxes)
                excluded.append(out)
                unsure.append(maybe)
        return _bits(excluded, slots), _bits(unsure, slots)


def _bits(parts: list[np.ndarray], slots: int) -> int:
    return from_positions(np.concatenate(parts) if parts else _EMPTY, slots)
