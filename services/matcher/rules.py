"""Can this facility make this design? Each requirement met, weakly met, unknown or unmet,
and a score. Pure.

- status: only an Active facility can make anything;
- process: offered as the same or a more specific process (met), only as a more generic
  one (weak: "3D printing" stated, SLA needed);
- material: where both sides state materials, worked as the same or a more specific
  material (met) or only a more generic one (weak); none stated: unknown;
- size: a part fits, in some axis-aligned orientation, the working volume of a machine of
  a process the part needs; no such volume stated: unknown.
Unknowns lower the score instead of rejecting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from contracts import vocabulary
from contracts.matches import Outcome, Reason
from services.matcher.profiles import (
    ACTIVE,
    DesignProfile,
    FacilityProfile,
    Machine,
    Need,
    PartNeed,
    Size,
)

FACTOR: dict[Outcome, float] = {"met": 1.0, "weak": 0.8, "unknown": 0.75, "unmet": 0.0}
INFERRED_FACTOR = 0.95  # a guessed requirement met is a little less certain


_req = Reason


@dataclass(frozen=True, slots=True)
class Evaluation:
    requirements: tuple[Reason, ...]
    score: float

    @property
    def unmet(self) -> tuple[Reason, ...]:
        return tuple(r for r in self.requirements if r.outcome == "unmet")

    @property
    def matches(self) -> bool:
        return not self.unmet

    @property
    def near_miss(self) -> bool:
        return len(self.unmet) == 1

    def summary(self) -> str:
        if self.matches:
            return "match"
        missing = ", ".join(f"{r.kind} {r.need}" for r in self.unmet)
        return f"missing {len(self.unmet)} of {len(self.requirements)}: {missing}"


def can_design_match(design: DesignProfile) -> bool:
    """A design with no process to make it by matches nothing: matching it to every
    active facility would tell no one anything."""
    return bool(design.known_processes)


@cache
def answering(kind: str, term: str) -> frozenset[str]:
    """Terms that meet (same, more specific) or weakly meet (more generic) a need."""
    vocab = vocabulary.vocabulary(kind)  # type: ignore[arg-type]
    return vocab.with_descendants(term) | vocab.ancestors(term)


def can_make(design: DesignProfile, facility: FacilityProfile) -> bool:
    """evaluate(design, facility).matches, without building the explanation: the index
    asks this for every candidate, and explains only the pairs that change."""
    if facility.status != ACTIVE:
        return False
    known = design.known_processes
    if not known:
        return False
    offered = facility.processes
    for need in known:
        if need not in offered and not (answering("process", need) & offered):
            return False
    materials = facility.materials
    if materials:
        for need in design.materials:
            if need.known and need.id not in materials and not (
                    answering("material", need.id) & materials):
                return False
    if design.parts and facility.machines:
        for part in design.parts:
            if not fits_some_machine(part, facility):
                return False
    return True


def fits_some_machine(part: PartNeed, facility: FacilityProfile) -> bool:
    """Whether the size rule lets the part through: it fits a machine of its process, or
    no such machine states its size."""
    return _part_fits(part, facility) is not False


def _part_fits(part: PartNeed, facility: FacilityProfile) -> bool | None:
    """True: some machine of the part's process takes it; False: none of those with a known
    size does; None: no such machine states its size."""
    measured = False
    for machine in facility.machines:
        if _measures(machine, part):
            measured = True
            if fits(part.size, machine.size):  # type: ignore[arg-type]
                return True
    return False if measured else None


def _measures(machine: Machine, part: PartNeed) -> bool:
    """The machine is of a process the part needs, and its size is known."""
    return machine.size is not None and any(
        p in answering_strictly(q) for q in part.processes for p in machine.processes)


@cache
def answering_strictly(process: str) -> frozenset[str]:
    """Processes that fully meet a need: the same or more specific."""
    return vocabulary.processes().with_descendants(process)


@cache
def generic_or_same(process: str) -> frozenset[str]:
    """The needs a machine of this process fully meets."""
    return vocabulary.processes().ancestors(process) | {process}


def evaluate(design: DesignProfile, facility: FacilityProfile) -> Evaluation:
    return Explainer().evaluate(design, facility)


class Explainer:
    """evaluate, with what a fan-out repeats remembered by the identity of what it reads:
    thousands of facilities share a few (shared, see profiles.shared) capability sets and
    machine lists, so each requirement's reason is worked out once per need and set; a
    part's size, once per machine list and process, finds the machines to compare with.
    Only for the span in which those objects stay alive (one fan-out)."""

    def __init__(self) -> None:
        self._groups: dict[tuple[object, ...], tuple[tuple[Reason, ...], float]] = {}
        self._measures: dict[tuple[object, ...], bool] = {}
        self._evaluations: dict[tuple[object, ...], Evaluation] = {}

    def evaluate(self, design: DesignProfile, facility: FacilityProfile) -> Evaluation:
        key = (id(design.processes), id(design.materials), id(design.parts), facility.status,
               id(facility.processes), id(facility.materials), id(facility.machines))
        found = self._evaluations.get(key)
        if found is None:
            found = self._evaluations[key] = self._evaluate(design, facility)
        return found

    def _evaluate(self, design: DesignProfile, facility: FacilityProfile) -> Evaluation:
        status = self._group(("s", facility.status), lambda: _status_reasons(facility))
        processes = self._group(("p", id(design.processes), id(facility.processes)),
                                lambda: _process_reasons(design.processes, facility))
        materials = self._group(("m", id(design.materials), id(facility.materials)),
                                lambda: _material_reasons(design.materials, facility))
        requirements = [*status[0], *processes[0], *materials[0]]
        score = status[1] * processes[1] * materials[1]
        for part in design.parts:
            req = _size(part, [m for m in facility.machines if self._measured(m, part)])
            requirements.append(req)
            score *= FACTOR[req.outcome]
        if not can_design_match(design):
            requirements.append(_req(kind="process", need="any", outcome="unmet",
                                     note="the design names no process to make it by"))
            score = 0.0
        return Evaluation(tuple(requirements), round(score, 4))

    def _group(self, key: tuple[object, ...],
               reasons: Callable[[], tuple[tuple[Reason, ...], float]],
               ) -> tuple[tuple[Reason, ...], float]:
        found = self._groups.get(key)
        if found is None:
            found = self._groups[key] = reasons()
        return found

    def _measured(self, machine: Machine, part: PartNeed) -> bool:
        key = (id(machine), part.processes)
        known = self._measures.get(key)
        if known is None:
            known = self._measures[key] = _measures(machine, part)
        return known


def _status_reasons(facility: FacilityProfile) -> tuple[tuple[Reason, ...], float]:
    return (_status(facility),), 1.0 if facility.active else 0.0


def _process_reasons(needs: tuple[Need, ...], facility: FacilityProfile,
                     ) -> tuple[tuple[Reason, ...], float]:
    return _graded(needs, [_process(need, facility) for need in needs], weigh_inferred=True)


def _material_reasons(needs: tuple[Need, ...], facility: FacilityProfile,
                      ) -> tuple[tuple[Reason, ...], float]:
    return _graded(needs, [_material(need, facility) for need in needs], weigh_inferred=False)


def _graded(needs: tuple[Need, ...], reasons: list[Reason], *, weigh_inferred: bool,
            ) -> tuple[tuple[Reason, ...], float]:
    """The reasons with the score factor they make together (a guessed process need met
    is a little less certain)."""
    score = 1.0
    for need, req in zip(needs, reasons, strict=True):
        score *= FACTOR[req.outcome] * (
            INFERRED_FACTOR if weigh_inferred and need.inferred else 1.0)
    return tuple(reasons), score


def _status(facility: FacilityProfile) -> Reason:
    if facility.active:
        return _req(kind="status", need="active", outcome="met")
    return _req(kind="status", need="active", outcome="unmet",
                       note=f"facility is {facility.status}")


def offered_for(process: str, offered: frozenset[str] | tuple[str, ...]) -> tuple[str, str]:
    """How a facility's processes answer one needed process: ('met'|'weak'|'unmet', by)."""
    vocab = vocabulary.processes()
    if process in offered:
        return "met", process
    # The first of several answers by name, not by set order: set order changes with the
    # hash seed, and the reason is part of a MATCHES piece's id (a restarted matcher must
    # cut the same pieces again).
    specific = vocab.descendants(process).intersection(offered)
    if specific:
        return "met", min(specific)
    generic = vocab.ancestors(process).intersection(offered)
    if generic:
        return "weak", min(generic)
    return "unmet", ""


def _process(need: Need, facility: FacilityProfile) -> Reason:
    if not need.known:
        if need.id in facility.processes:
            return _req(kind="process", need=need.id, outcome="met", by=need.id)
        return _req(kind="process", need=need.id, outcome="unknown",
                           note="not in the vocabulary; compared by name only")
    outcome, by = offered_for(need.id, facility.processes)
    note = "inferred from the manifest" if need.inferred else None
    if outcome == "weak":
        note = f"facility states only the more generic {by!r}"
    return _req(kind="process", need=need.id, outcome=outcome,  # type: ignore[arg-type]
                       by=by or None, note=note)


def _material(need: Need, facility: FacilityProfile) -> Reason:
    if not facility.materials:
        return _req(kind="material", need=need.id, outcome="unknown",
                           note="facility states no materials")
    if need.id in facility.materials:
        return _req(kind="material", need=need.id, outcome="met", by=need.id)
    if not need.known:
        return _req(kind="material", need=need.id, outcome="unknown",
                           note="not in the vocabulary; compared by name only")
    vocab = vocabulary.materials()
    # by name, not set order, as in offered_for
    specific = vocab.descendants(need.id).intersection(facility.materials)
    if specific:
        return _req(kind="material", need=need.id, outcome="met", by=min(specific))
    generic = vocab.ancestors(need.id).intersection(facility.materials)
    if generic:
        m = min(generic)
        return _req(kind="material", need=need.id, outcome="weak", by=m,
                           note=f"facility states only the more generic {m!r}")
    return _req(kind="material", need=need.id, outcome="unmet")


@cache
def _part_label(name: str, size: Size) -> str:
    return f"part {name!r} {' x '.join(f'{s:g}' for s in size)} mm"


def fits(part: Size, volume: Size) -> bool:
    """Axis-aligned, any orientation: sorted sides against sorted sides. A bed (2 sides)
    takes the part's two largest sides (sheet work: thickness is not a bed dimension). A
    need of one side fits a machine whose largest side takes it."""
    if len(part) == 1:
        return part[0] <= volume[-1]
    if len(volume) == 2:
        part = part[-2:]
    return all(p <= v for p, v in zip(part, volume, strict=False))


def _size(part: PartNeed, measured: list[Machine]) -> Reason:
    """measured: the facility's machines of a process the part needs, of known size."""
    need = _part_label(part.name, part.size)
    for machine in measured:
        if fits(part.size, machine.size):  # type: ignore[arg-type]
            return _req(kind="size", need=need, outcome="met", by=machine.label)
    if measured:
        return _req(kind="size", need=need, outcome="unmet",
                    note=f"larger than the {len(measured)} machine(s) with known size")
    return _req(kind="size", need=need, outcome="unknown",
                note="no machine of this process states its working volume")
