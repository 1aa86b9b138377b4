"""What matching needs of a design or a facility, in a compact form that is cheap to keep
for 100,000s of entities and to checkpoint. Pure."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from contracts import vocabulary
from contracts.models import Design, Facility, FacilityStatus

ACTIVE = FacilityStatus.active.value
Size = tuple[float, ...]  # sorted ascending; 2 sides for a bed, 3 for a volume; a need
# may state 1 ("a bed at least 170 mm wide")


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
                           shared(tuple(n.id for n in self.processes if n.known)))

    def same_for_matching(self, other: DesignProfile | None) -> bool:
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

    def same_for_matching(self, other: FacilityProfile | None) -> bool:
        """Whether matching can tell the two apart (a new name or address cannot)."""
        return other is not None and (self.status, self.processes, self.materials,
                                      self.machines) == (other.status, other.processes,
                                                         other.materials, other.machines)


def sorted_size(box: Mapping[str, Any] | None, least: int = 2) -> Size | None:
    """The sides stated, sorted; None when fewer than `least` are (a machine of one known
    side has no known size; a need may state one)."""
    if not box:
        return None
    sides = [float(s) for s in (box.get("x_mm"), box.get("y_mm"), box.get("z_mm"))
             if s is not None]
    return tuple(sorted(sides)) if len(sides) >= least else None


T = TypeVar("T")
_SHARED: dict[Any, Any] = {}
_SHARED_MAX = 500_000


def shared(value: T) -> T:
    """One object for equal values: 100,000s of profiles hold the same few process sets,
    material sets and machines, and each copy would cost hundreds of bytes. Bounded: past
    the limit it starts again (sharing is an optimisation, never a meaning)."""
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(value, value)


def _terms(ids: Any) -> tuple[str, ...]:
    # Vocabulary ids repeat across 100,000s of profiles: one string object each. A tuple
    # seen before is found as it is, without interning its strings again.
    key = tuple(ids)
    found = _SHARED.get(key)
    return found if found is not None else shared(tuple(sys.intern(i) for i in key))


_NEEDS: dict[tuple[str, bool, bool], Need] = {}


def need(id_: str, known: bool = True, inferred: bool = False) -> Need:
    """One Need object per distinct need: 100,000s of designs share a few hundred. Found
    by a plain tuple: a dataclass's hash is computed in Python, on every profile read."""
    key = (id_, known, inferred)
    found = _NEEDS.get(key)
    if found is None:
        if len(_NEEDS) >= _SHARED_MAX:
            _NEEDS.clear()
        found = _NEEDS[key] = Need(sys.intern(id_), known, inferred)
    return found


def _as_dict(entity: BaseModel | Mapping[str, Any]) -> Mapping[str, Any]:
    return entity.model_dump() if isinstance(entity, BaseModel) else entity


def design_profile(design: Design | Mapping[str, Any], version: int) -> DesignProfile:
    """From a Design, or its JSON form as REGISTRY carries it (already validated by the
    registry: reading it as a dict is five times faster than validating it again)."""
    d = _as_dict(design)
    vocab = vocabulary.processes()
    needs = []
    for term in d.get("processes") or ():
        entry = vocab.entries.get(term["id"])
        if entry is not None and not entry.requirement:
            continue  # bought, not made
        needs.append(need(term["id"], term.get("known", True), term.get("inferred", False)))
    parts = []
    for part in d.get("parts") or ():
        size = sorted_size(part.get("outer_dimensions"), least=1)
        processes = _terms(t["id"] for t in part.get("processes") or () if t.get("known", True))
        if size and processes:
            parts.append(PartNeed(sys.intern(part["name"]), processes, size))
    return DesignProfile(
        id=d["id"], version=version, processes=shared(tuple(needs)),
        materials=shared(tuple(need(t["id"], t.get("known", True), t.get("inferred", False))
                               for t in d.get("materials") or ())),
        parts=tuple(parts))


def facility_profile(facility: Facility | Mapping[str, Any], version: int) -> FacilityProfile:
    f = _as_dict(facility)
    machines = shared(tuple(
        shared(Machine(label=" ".join(x for x in (e.get("make"), e.get("model")) if x)
                       or e.get("equipment_type") or "equipment",
                       processes=_terms(t["id"] for t in e.get("processes") or ()),
                       materials=_terms(t["id"] for t in e.get("materials") or ()),
                       size=sorted_size(e.get("working_volume"))))
        for e in f.get("equipment") or ()))
    materials = {t["id"] for t in f.get("materials") or ()} | {
        m for x in machines for m in x.materials}
    location = f.get("location") or {}
    return FacilityProfile(
        id=f["id"], version=version, status=sys.intern(str(f.get("status") or ACTIVE)),
        lat=location.get("lat"), lon=location.get("lon"),
        processes=shared(frozenset(_terms(t["id"] for t in f.get("processes") or ()))),
        materials=shared(frozenset(_terms(materials))),
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
            id_, version, shared(tuple(need(i, k, f) for i, k, f in processes)),
            shared(tuple(need(i, k, f) for i, k, f in materials)),
            tuple(PartNeed(sys.intern(n), _terms(p), tuple(s)) for n, p, s in parts))
    _, id_, version, status, lat, lon, processes, materials, machines = data
    return FacilityProfile(
        id_, version, sys.intern(status), lat, lon, shared(frozenset(_terms(processes))),
        shared(frozenset(_terms(materials))),
        shared(tuple(shared(Machine(label, _terms(p), _terms(m), tuple(s) if s else None))
                     for label, p, m, s in machines)))
