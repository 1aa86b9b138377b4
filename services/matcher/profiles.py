"""What matching needs of a design or a facility, in a compact form that is cheap to keep
for 100,000s of entities and to checkpoint. Pure."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from contracts import vocabulary
from contracts.models import Box, Design, Facility, FacilityStatus

ACTIVE = FacilityStatus.active.value
Size = tuple[float, ...]  # sorted ascending; 2 sides for a bed, 3 for a volume


@dataclass(frozen=True, slots=True)
class Need:
    """A process or material the design needs; `known` is False for a term outside the
    vocabulary, compared by name only."""

    id: str
    known: bool = True
    inferred: bool = False


@dataclass(frozen=True, slots=True)
class PartNeed:
    name: str
    processes: tuple[str, ...]
    size: Size


@dataclass(frozen=True, slots=True)
class DesignProfile:
    id: str
    version: int
    processes: tuple[Need, ...]
    materials: tuple[Need, ...]
    parts: tuple[PartNeed, ...]
    known_processes: tuple[str, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # asked for every candidate pair: computed once
        object.__setattr__(self, "known_processes",
                           tuple(n.id for n in self.processes if n.known))

    def same_needs(self, other: DesignProfile | None) -> bool:
        return other is not None and (self.processes, self.materials, self.parts) == (
            other.processes, other.materials, other.parts)


@dataclass(frozen=True, slots=True)
class Machine:
    label: str
    processes: tuple[str, ...]
    materials: tuple[str, ...]
    size: Size | None


@dataclass(frozen=True, slots=True)
class FacilityProfile:
    id: str
    version: int
    status: str
    lat: float | None
    lon: float | None
    processes: frozenset[str]
    materials: frozenset[str]
    machines: tuple[Machine, ...]

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def same_but_processes(self, other: FacilityProfile) -> bool:
        return (self.status, self.materials, self.machines) == (other.status, other.materials,
                                                                 other.machines)

    def same_capabilities(self, other: FacilityProfile | None) -> bool:
        """Whether matching can tell the two apart (a new name or address cannot)."""
        return other is not None and (self.status, self.processes, self.materials,
                                      self.machines) == (other.status, other.processes,
                                                         other.materials, other.machines)


def sorted_size(box: Box | None) -> Size | None:
    if box is None:
        return None
    sides = [s for s in (box.x_mm, box.y_mm, box.z_mm) if s is not None]
    return tuple(sorted(sides)) if len(sides) >= 2 else None


def _terms(ids: Any) -> tuple[str, ...]:
    # Vocabulary ids repeat across 100,000s of profiles: one string object each.
    return tuple(sys.intern(i) for i in ids)


def design_profile(design: Design, version: int) -> DesignProfile:
    vocab = vocabulary.processes()
    needs = []
    for term in design.processes:
        entry = vocab.entries.get(term.id)
        if entry is not None and not entry.requirement:
            continue  # bought, not made
        needs.append(Need(sys.intern(term.id), term.known, term.inferred))
    parts = []
    for part in design.parts:
        size = sorted_size(part.outer_dimensions)
        processes = _terms(t.id for t in part.processes if t.known)
        if size and processes:
            parts.append(PartNeed(part.name, processes, size))
    return DesignProfile(
        id=design.id, version=version, processes=tuple(needs),
        materials=tuple(Need(sys.intern(t.id), t.known, t.inferred) for t in design.materials),
        parts=tuple(parts))


def facility_profile(facility: Facility, version: int) -> FacilityProfile:
    machines = tuple(
        Machine(label=" ".join(x for x in (e.make, e.model) if x) or e.equipment_type
                or "equipment", processes=_terms(t.id for t in e.processes),
                materials=_terms(t.id for t in e.materials), size=sorted_size(e.working_volume))
        for e in facility.equipment)
    materials = {t.id for t in facility.materials} | {m for x in machines for m in x.materials}
    return FacilityProfile(
        id=facility.id, version=version, status=sys.intern(facility.status.value),
        lat=facility.location.lat, lon=facility.location.lon,
        processes=frozenset(_terms(t.id for t in facility.processes)),
        materials=frozenset(_terms(materials)),
        machines=machines)


# Checkpoint form: plain JSON-able lists, the same fields in the same order.

def dump_design(p: DesignProfile) -> list[Any]:
    return ["d", p.id, p.version, [[n.id, n.known, n.inferred] for n in p.processes],
            [[n.id, n.known, n.inferred] for n in p.materials],
            [[x.name, list(x.processes), list(x.size)] for x in p.parts]]


def dump_facility(p: FacilityProfile) -> list[Any]:
    return ["f", p.id, p.version, p.status, p.lat, p.lon, sorted(p.processes),
            sorted(p.materials),
            [[m.label, list(m.processes), list(m.materials),
              list(m.size) if m.size else None] for m in p.machines]]


def load_profile(data: list[Any]) -> DesignProfile | FacilityProfile:
    if data[0] == "d":
        _, id_, version, processes, materials, parts = data
        return DesignProfile(
            id_, version, tuple(Need(sys.intern(i), k, f) for i, k, f in processes),
            tuple(Need(sys.intern(i), k, f) for i, k, f in materials),
            tuple(PartNeed(n, _terms(p), tuple(s)) for n, p, s in parts))
    _, id_, version, status, lat, lon, processes, materials, machines = data
    return FacilityProfile(
        id_, version, sys.intern(status), lat, lon, frozenset(_terms(processes)),
        frozenset(_terms(materials)),
        tuple(Machine(label, _terms(p), _terms(m), tuple(s) if s else None)
              for label, p, m, s in machines))
