"""The difference one change makes to the set of matches. Pure.

matches(new) - matches(old) are found, matches(old) - matches(new) withdrawn, where both
sides are computed against the index as it is apart from the changed entity: so no match
set is ever stored, and a replay of the same change gives the same transitions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from contracts.matches import MatchKind
from services.matcher.index import CapabilityIndex
from services.matcher.profiles import DesignProfile, FacilityProfile
from services.matcher.rules import Evaluation, can_make, evaluate


@dataclass(frozen=True, slots=True)
class Transition:
    kind: MatchKind
    design_id: str
    design_version: int
    facility_id: str
    facility_version: int
    evaluation: Evaluation


def apply_design(index: CapabilityIndex, design_id: str, new: DesignProfile | None,
                 version: int) -> list[Transition]:
    """Apply a design upsert (new) or deletion (None at `version`) and say what changed."""
    old = index.designs.get(design_id)
    index.versions[("design", design_id)] = version
    if new is not None and new.same_needs(old):
        index.put_design(new)  # a new description or licence: no match can change
        return []
    before = index.matches_of_design(old) if old else set()
    if new is None:
        index.remove_design(design_id)
        after: set[str] = set()
    else:
        index.put_design(new)
        after = index.matches_of_design(new)
    design = new or old

    def transition(kind: MatchKind, fid: str) -> Transition:
        facility = index.facilities[fid]
        return Transition(kind, design_id, version, fid, facility.version,
                          evaluate(design, facility))  # type: ignore[arg-type]

    return _transitions(before, after, transition)


def apply_facility(index: CapabilityIndex, facility_id: str, new: FacilityProfile | None,
                   version: int) -> list[Transition]:
    old = index.facilities.get(facility_id)
    index.versions[("facility", facility_id)] = version
    if new is not None and new.same_capabilities(old):
        index.put_facility(new)  # a new name or place: no match can change
        return []
    if old is not None and new is not None and new.same_but_processes(old):
        # Only designs a gained or lost process answers can change: the usual edit (a
        # machine added or removed) costs its own fan-out, not the facility's.
        affected = index.designs_answered_by(old.processes ^ new.processes)
        before = {d for d in affected if can_make(index.designs[d], old)}
        index.put_facility(new)
        after = {d for d in affected if can_make(index.designs[d], new)}
    else:
        before = index.matches_of_facility(old) if old else set()
        if new is None:
            index.remove_facility(facility_id)
            after = set()
        else:
            index.put_facility(new)
            after = index.matches_of_facility(new)
    facility = new or old

    def transition(kind: MatchKind, did: str) -> Transition:
        design = index.designs[did]
        return Transition(kind, did, design.version, facility_id, version,
                          evaluate(design, facility))  # type: ignore[arg-type]

    return _transitions(before, after, transition)


def _transitions(before: set[str], after: set[str],
                 transition: Callable[[MatchKind, str], Transition]) -> list[Transition]:
    """Found for what matches only after, withdrawn for what matched only before; each
    explained against the entity's state after the change (its last, when deleted)."""
    return ([transition("found", other) for other in sorted(after - before)]
            + [transition("withdrawn", other) for other in sorted(before - after)])
