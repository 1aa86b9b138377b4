"""The capability index: every design and facility profile, and for each side posting
lists (as bitsets over its entities' slots) from what matching asks to who answers it. Pure.

A design's facilities are a few intersections: active, answering each process, answering
each material or stating none, then a size check only for those whose machines are not
surely big enough (a ladder of cube sides says which are). A facility's designs are the
designs with a need, minus those needing a process or material the facility cannot
answer, then the same size check. The rules (rules.can_make) decide only the few pairs the
bitsets cannot; all_pairs, the brute-force reference, is what the tests compare with."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from contracts.geo import cell, haversine_km, reach
from services.matcher.bitset import Key, Postings, SlotTable, present
from services.matcher.parts import PartTable, Rungs
from services.matcher.profiles import DesignProfile, FacilityProfile, PartNeed
from services.matcher.rules import (
    answering,
    can_design_match,
    can_make,
    evaluate,
    fits_some_machine,
    generic_or_same,
)

# Side lengths (mm): a machine whose sorted sides are at least rungs (i, j, k) surely takes
# a part whose sorted sides are at most those rungs. Between rungs, the exact rule decides.
# Common machine sizes are rungs, so that for most machines the two roundings agree and
# no pair needs the exact rule.
LADDER = (10, 25, 50, 75, 100, 150, 180, 200, 210, 220, 250, 300, 350, 400, 500, 600, 800,
          900, 1000, 1200, 1500, 2000, 3000, 5000)

P = TypeVar("P", DesignProfile, FacilityProfile)



class Side(Mapping[str, P], Generic[P]):
    """The profiles of one kind by id, their slots, and their posting lists."""

    def __init__(self) -> None:
        self.slots = SlotTable()
        self.by_slot: list[P | None] = []
        self.postings = Postings()
        self.deleted: dict[str, int] = {}  # id -> version of the deletion applied
        self.generation = 0  # changes with every put and remove: memos compare it

    def __getitem__(self, entity_id: str) -> P:
        profile = self.get(entity_id)
        if profile is None:
            raise KeyError(entity_id)
        return profile

    def get(self, entity_id: str, default: P | None = None) -> P | None:  # type: ignore[override]
        slot = self.slots.slot_of.get(entity_id)
        return default if slot is None else self.by_slot[slot]

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self.slots.slot_of

    def __iter__(self) -> Iterator[str]:
        return iter(self.slots.slot_of)

    def __len__(self) -> int:
        return len(self.slots)

    def version(self, entity_id: str) -> int:
        profile = self.get(entity_id)
        return profile.version if profile is not None else self.deleted.get(entity_id, 0)

    def put(self, profile: P, keys: list[Key]) -> None:
        self.generation += 1
        self.postings.add(keys, self._place(profile))
        self.deleted.pop(profile.id, None)

    def replace(self, profile: P) -> None:
        """The indexed entity's profile, with the same keys, as a new object (a new
        version that matching cannot tell apart): no posting list changes."""
        self.by_slot[self.slots.slot_of[profile.id]] = profile
        self.deleted.pop(profile.id, None)

    def _place(self, profile: P) -> int:
        slot = self.slots.assign(profile.id)
        if slot == len(self.by_slot):
            self.by_slot.append(profile)
        else:
            self.by_slot[slot] = profile
        return slot

    def remove(self, entity_id: str, keys: list[Key]) -> None:
        self.generation += 1
        slot = self.slots.release(entity_id)
        if slot is not None:
            self.postings.remove(keys, slot)
            self.by_slot[slot] = None

    def load(self, profiles: Iterable[P], keys_of: object) -> None:
        """Many profiles at once into an empty side: each posting list built in one pass."""
        if self.slots:
            raise RuntimeError("load() fills an empty side; use put() on a live one")
        self.generation += 1
        keyed: dict[Key, list[int]] = defaultdict(list)
        for profile in profiles:
            slot = self._place(profile)
            for key in keys_of(profile):  # type: ignore[operator]
                keyed[key].append(slot)
        self.postings.load(keyed)

    def profiles(self, bits: int) -> Iterator[P]:
        return present(self.by_slot, bits)


TOP = len(LADDER) + 1  # a bed's third side: any thickness


def facility_keys(f: FacilityProfile) -> list[Key]:
    """What a facility answers. ("p", need): a process need it meets or weakly meets;
    ("m", need) likewise for materials, or ("nomat",) when it states none; ("meas", q): it
    has a machine of process q (or a more specific one) with a stated size;
    ("box", q, (down, up)): such a machine, its sides rounded down and up to rungs."""
    keys: list[Key] = [("p", k) for k in _closure("process", f.processes)]
    if f.active:
        keys.append(("active",))
    if f.materials:
        keys.extend(("m", k) for k in _closure("material", f.materials))
    else:
        keys.append(("nomat",))
    for q, boxes in machine_boxes(f).items():
        keys.append(("meas", q))
        keys.extend(("box", q, box) for box in boxes)
    return keys


def machine_boxes(f: FacilityProfile) -> dict[str, set[tuple[Rungs, Rungs]]]:
    """For each process q a sized machine fully answers: its sorted sides as ladder rungs,
    rounded down (what it surely takes) and up (what it might take)."""
    out: dict[str, set[tuple[Rungs, Rungs]]] = {}
    for machine in f.machines:
        size = machine.size
        if size is None:
            continue
        down = [bisect_right(LADDER, side) - 1 for side in size]
        up = [bisect_left(LADDER, side) for side in size]
        if len(size) == 2:
            down, up = [TOP, *down], [TOP, *up]
        box = ((down[0], down[1], down[2]), (up[0], up[1], up[2]))
        for p in machine.processes:
            for q in generic_or_same(p):
                out.setdefault(q, set()).add(box)
    return out


def part_rungs(part: PartNeed) -> tuple[Rungs, Rungs]:
    """The part's sorted sides rounded up to rungs, as two boxes: a machine whose sides
    rounded down take the first surely takes the part; one whose sides rounded up do not
    take the second surely does not (a side s fits a side m only if rung(s) <= rung(m)).
    A flat part has no third side: for 'surely' its larger side stands for it."""
    up = [bisect_left(LADDER, side) for side in part.size]
    if len(up) == 1:  # one side: the machine's largest must take it
        return (0, 0, up[0]), (0, 0, up[0])
    if len(up) == 2:
        return (up[0], up[1], up[1]), (0, up[0], up[1])
    box = (up[0], up[1], up[2])
    return box, box


def takes(box: Rungs, part: Rungs) -> bool:
    return box[0] >= part[0] and box[1] >= part[1] and box[2] >= part[2]


def design_keys(d: DesignProfile) -> list[Key]:
    """What a design needs. ("any",): it can match at all; ("p", n) / ("m", n): a known
    process / material need. Its parts' sizes go to the part table (design_parts)."""
    if not can_design_match(d):
        return []
    keys: list[Key] = [("any",)]
    keys.extend(("p", n) for n in d.known_processes)
    keys.extend(("m", n.id) for n in d.materials if n.known)
    return keys


def design_parts(d: DesignProfile) -> list[tuple[tuple[str, ...], Rungs, Rungs]]:
    """(processes, up, down) of each part of a design that can match (see part_rungs)."""
    if not can_design_match(d):
        return []
    return [(part.processes, *part_rungs(part)) for part in d.parts]


class CapabilityIndex:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.designs: Side[DesignProfile] = Side()
        self.facilities: Side[FacilityProfile] = Side()
        self._cells: dict[tuple[int, int], set[str]] = defaultdict(set)
        self.parts = PartTable()
        self._size_memo: tuple[object, tuple[int, int]] = (None, (0, 0))

    # upkeep

    def version(self, kind: str, entity_id: str) -> int:
        """The version applied last (a deletion's included), 0 for never seen."""
        return (self.designs if kind == "design" else self.facilities).version(entity_id)

    def put_design(self, profile: DesignProfile) -> None:
        self.remove_design(profile.id)
        self.designs.put(profile, design_keys(profile))
        self.parts.add(self.designs.slots.slot_of[profile.id], design_parts(profile))

    def refresh_design(self, profile: DesignProfile) -> None:
        """An indexed design at a new version with the same needs (same_for_matching)."""
        self.designs.replace(profile)

    def remove_design(self, design_id: str, version: int | None = None) -> None:
        old = self.designs.get(design_id)
        if old is not None:
            self.parts.remove(self.designs.slots.slot_of[design_id], design_parts(old))
            self.designs.remove(design_id, design_keys(old))
        if version is not None:
            self.designs.deleted[design_id] = version

    def put_facility(self, profile: FacilityProfile) -> None:
        self.remove_facility(profile.id)
        self.facilities.put(profile, facility_keys(profile))
        self._grid_add(profile)

    def refresh_facility(self, profile: FacilityProfile) -> None:
        """An indexed facility at a new version with the same capabilities
        (FacilityProfile.same_for_matching): it may have moved."""
        old = self.facilities[profile.id]
        if (old.lat, old.lon) != (profile.lat, profile.lon):
            self._grid_remove(old)
            self._grid_add(profile)
        self.facilities.replace(profile)

    def _grid_add(self, f: FacilityProfile) -> None:
        if f.lat is not None and f.lon is not None:
            self._cells[cell(f.lat, f.lon)].add(f.id)

    def _grid_remove(self, f: FacilityProfile) -> None:
        if f.lat is None or f.lon is None:
            return
        where = cell(f.lat, f.lon)
        ids = self._cells.get(where)
        if ids is not None:
            ids.discard(f.id)
            if not ids:
                del self._cells[where]

    def remove_facility(self, facility_id: str, version: int | None = None) -> None:
        old = self.facilities.get(facility_id)
        if old is not None:
            self.facilities.remove(facility_id, facility_keys(old))
            self._grid_remove(old)
        if version is not None:
            self.facilities.deleted[facility_id] = version

    def load(self, designs: Iterable[DesignProfile],
             facilities: Iterable[FacilityProfile]) -> None:
        """Index many profiles at once (start-up): much faster than one put each."""
        self.designs.load(designs, design_keys)
        slot_of = self.designs.slots.slot_of
        self.parts.load((slot_of[d.id], *part) for d in self.designs.values()
                        for part in design_parts(d))
        facilities = list(facilities)
        self.facilities.load(facilities, facility_keys)
        for f in facilities:
            self._grid_add(f)

    # matches, as bitsets over the other side's slots

    def facilities_for(self, design: DesignProfile) -> int:
        """The facilities that can make the design (it need not be indexed)."""
        if not can_design_match(design):
            return 0
        f = self.facilities.postings
        found = f.get(("active",))
        for need in design.known_processes:
            found &= f.get(("p", need))
            if not found:
                return 0
        nomat = f.get(("nomat",))
        for need in design.materials:
            if need.known:
                found &= f.get(("m", need.id)) | nomat
        for part in design.parts:
            measured = found & f.union(("meas", q) for q in part.processes)
            if not measured:
                continue
            up, down = part_rungs(part)
            boxes = [key for q in part.processes for key in f.group(("box", q))]
            surely = f.union(key for key in boxes if takes(key[2][0], up))
            maybe = f.union(key for key in boxes if takes(key[2][1], down))
            found &= ~(measured & ~maybe)
            for facility in self.facilities.profiles(measured & maybe & ~surely):
                if not fits_some_machine(part, facility):
                    found &= ~(1 << self.facilities.slots.slot_of[facility.id])
        return found

    def designs_for(self, facility: FacilityProfile) -> int:
        """The designs the facility can make (it need not be indexed)."""
        if not facility.active:
            return 0
        d = self.designs.postings
        found = d.get(("any",))
        processes = _closure("process", facility.processes)
        for key in d.group(("p",)):
            if key[1] not in processes:
                found &= ~d.bits[key]
        if facility.materials:
            materials = _closure("material", facility.materials)
            for key in d.group(("m",)):
                if key[1] not in materials:
                    found &= ~d.bits[key]
        excluded, unsure = self._size_filter(machine_boxes(facility))
        found &= ~excluded
        for design in self.designs.profiles(found & unsure):
            if not can_make(design, facility):
                found &= ~(1 << self.designs.slots.slot_of[design.id])
        return found

    def _size_filter(self, machines: dict[str, set[tuple[Rungs, Rungs]]]) -> tuple[int, int]:
        """(designs a part of which surely fits none of these machines, designs the exact
        rule must decide). Remembered for the last machines while no design changes: a
        facility change asks it for the old and the new state, mostly with the same
        machines."""
        memo_key = (self.designs.generation, repr(sorted((q, sorted(b))
                                                         for q, b in machines.items())))
        if self._size_memo[0] == memo_key:
            return self._size_memo[1]
        result = self.parts.size_filter(machines, len(self.designs.by_slot))
        self._size_memo = (memo_key, result)
        return result

    def near_miss_candidates(self, design: DesignProfile) -> Iterator[FacilityProfile]:
        """Facilities answering every process need but at most one, whatever their status:
        the only ones that can miss at most one requirement."""
        f = self.facilities.postings
        sets = [f.get(("p", need)) for need in design.known_processes]
        if not sets:
            return iter(())
        # at least n-1 of n: for each i, everything but the i-th, from prefix and suffix
        prefix, suffix = [-1], [-1]
        for s in sets:
            prefix.append(prefix[-1] & s)
        for s in reversed(sets):
            suffix.append(suffix[-1] & s)
        anyone = f.union(("p", need) for need in design.known_processes)
        out = 0
        for i in range(len(sets)):
            out |= prefix[i] & suffix[len(sets) - 1 - i]
        return self.facilities.profiles(out & anyone)

    def near(self, lat: float, lon: float, radius_km: float) -> Iterator[tuple[str, float]]:
        """(facility id, distance) within the radius, from the grid cells it can reach."""
        rows, columns = reach(lat, lon, radius_km)
        for (row, column), ids in self._cells.items():
            if row not in rows or (columns is not None and column not in columns):
                continue
            for fid in ids:
                f = self.facilities[fid]
                d = haversine_km(lat, lon, f.lat, f.lon)  # type: ignore[arg-type]
                if d <= radius_km:
                    yield fid, d


def _closure(kind: str, terms: Iterable[str]) -> set[str]:
    """Every need these terms answer (the same, a more specific or a more generic term)."""
    out: set[str] = set()
    for t in terms:
        out |= answering(kind, t)
    return out




def all_pairs(designs: Iterable[DesignProfile],
              facilities: Iterable[FacilityProfile]) -> set[tuple[str, str]]:
    """Every matching pair by brute force: the reference the index is tested against."""
    facilities = list(facilities)
    return {(d.id, f.id) for d in designs for f in facilities if evaluate(d, f).matches}
