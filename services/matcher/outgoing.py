"""The match difference of one change as MATCHES pieces (contracts.matches). Pure.

Read it out before the next change to the index: a later change may give a slot of the
diff to another entity."""

from __future__ import annotations

from typing import Any

from contracts.events import EntityKind
from contracts.matches import (
    Cause,
    ChangedDesign,
    ChangedFacility,
    MatchKind,
    PairOut,
    Piece,
    encode_change,
)
from services.matcher.checkpoint import Change
from services.matcher.diff import Diff
from services.matcher.index import CapabilityIndex
from services.matcher.rules import Explainer


def change_pieces(diff: Diff, change: Change, index: CapabilityIndex,
                  max_bytes: int, partition: int = 0) -> list[Piece]:
    """The pieces of the change's match difference; none when it moved no match (most
    changes: a new name, a new description)."""
    if (not diff.found and not diff.withdrawn) or diff.entity is None:
        return []
    explainer = Explainer()
    cause = Cause(entity=change.kind, entity_id=change.entity_id, version=change.version,
                  event_id=change.cause_event_id, occurred_at=change.occurred_at)
    entity: Any = diff.entity
    out = []
    changed: ChangedDesign | ChangedFacility
    if diff.kind is EntityKind.design:
        changed = ChangedDesign(id=entity.id, version=diff.version,
                                processes=list(entity.known_processes))
        for t in diff.transitions(index):
            f = t.facility
            evaluation = explainer.evaluate(t.design, f)
            out.append(PairOut(t.kind, f.id, t.facility_version, _score(t.kind, evaluation.score),
                               evaluation.requirements, lat=f.lat, lon=f.lon))
    else:
        changed = ChangedFacility(id=entity.id, version=diff.version, lat=entity.lat,
                                  lon=entity.lon)
        for t in diff.transitions(index):
            d = t.design
            evaluation = explainer.evaluate(d, t.facility)
            out.append(PairOut(t.kind, d.id, t.design_version, _score(t.kind, evaluation.score),
                               evaluation.requirements, processes=d.known_processes))
    return encode_change(cause, changed, out, max_bytes, partition)


def _score(kind: MatchKind, score: float) -> float:
    return score if kind == "found" else 0.0
