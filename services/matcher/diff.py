"""The difference one change makes to the set of matches. Pure.

matches(new) - matches(old) are found, matches(old) - matches(new) withdrawn, where both
sides are computed against the index as it is apart from the changed entity: so no match
set is ever stored, and a replay of the same change gives the same transitions. The
difference is two bitsets; the transitions (and their explanations) are read out of it
only for publishing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from contracts.events import EntityKind
from contracts.matches import MATCH_KINDS, MatchKind
from services.matcher.index import CapabilityIndex
from services.matcher.profiles import DesignProfile, FacilityProfile


@dataclass(slots=True)  # not frozen: a fan-out makes thousands, and frozen costs twice
class Transition:
    kind: MatchKind
    design: DesignProfile
    design_version: int
    facility: FacilityProfile
    facility_version: int

    @property
    def design_id(self) -> str:
        return self.design.id

    @property
    def facility_id(self) -> str:
        return self.facility.id


@dataclass(frozen=True, slots=True)
class Diff:
    """found / withdrawn as bitsets over the other side's slots. Read it (transitions())
    before the next change to the index: a later change may give a slot to another entity."""

    kind: EntityKind  # the changed entity's
    entity: DesignProfile | FacilityProfile | None  # its new state, or its last if deleted
    version: int
    found: int = 0
    withdrawn: int = 0

    def __len__(self) -> int:
        return self.found.bit_count() + self.withdrawn.bit_count()

    def transitions(self, index: CapabilityIndex) -> Iterator[Transition]:
        if self.entity is None:
            return
        for kind, bits in zip(MATCH_KINDS, (self.found, self.withdrawn), strict=True):
            if self.kind is EntityKind.design:
                design = self.entity
                for facility in index.facilities.profiles(bits):
                    yield Transition(kind, design, self.version,  # type: ignore[arg-type]
                                     facility, facility.version)
            else:
                facility = self.entity
                for design in index.designs.profiles(bits):
                    yield Transition(kind, design, design.version,  # type: ignore[arg-type]
                                     facility, self.version)


def apply_design(index: CapabilityIndex, design_id: str, new: DesignProfile | None,
                 version: int) -> Diff:
    """Apply a design upsert (new) or deletion (None at `version`) and say what changed."""
    return _apply(EntityKind.design, index.designs.get(design_id), new, version,
                  refresh=index.refresh_design, put=index.put_design,
                  remove=lambda: index.remove_design(design_id, version),
                  matches=index.facilities_for)


def apply_facility(index: CapabilityIndex, facility_id: str, new: FacilityProfile | None,
                   version: int) -> Diff:
    return _apply(EntityKind.facility, index.facilities.get(facility_id), new, version,
                  refresh=index.refresh_facility, put=index.put_facility,
                  remove=lambda: index.remove_facility(facility_id, version),
                  matches=index.designs_for)


def _apply(kind: EntityKind, old: Any, new: Any, version: int, *,
           refresh: Callable[[Any], None], put: Callable[[Any], None], remove: Callable[[], None],
           matches: Callable[[Any], int]) -> Diff:
    if new is not None and new.same_for_matching(old):
        refresh(new)  # a new description, name or place: no match can change
        return Diff(kind, new, version)
    before = matches(old) if old else 0
    if new is None:
        remove()
        after = 0
    else:
        put(new)
        after = matches(new)
    return Diff(kind, new or old, version, after & ~before, before & ~after)
