"""What storing a document would give, without storing it: the entity, its warnings, and
what was inferred with its evidence. Pure; `makelocal validate` and the registry's
`POST /v1/validate` both answer with it."""

from __future__ import annotations

from typing import Any

from contracts import vocabulary
from contracts.events import EntityKind
from contracts.models import Design, Facility, Term


def report(entity: Design | Facility) -> dict[str, Any]:
    kind = EntityKind.design if isinstance(entity, Design) else EntityKind.facility
    out: dict[str, Any] = {"kind": kind, "id": entity.id, "name": entity.name,
                           "warnings": list(entity.warnings)}
    if isinstance(entity, Design):
        terms: list[tuple[vocabulary.TermKind, Term]] = [
            ("process", t) for t in entity.processes] + [
            ("material", t) for t in entity.materials]
        out["matchable"] = matchable(entity)
        out["inferred"] = [_inferred(kind_, t) for kind_, t in terms if t.inferred]
        out["sizes"] = [{"part": p.name, "size_mm": p.outer_dimensions.model_dump(
                            exclude_none=True) if p.outer_dimensions else None,
                         "processes": [t.id for t in p.processes], "evidence": p.evidence}
                        for p in entity.parts if p.evidence]
    out["entity"] = entity.model_dump(mode="json")
    return out


def matchable(design: Design) -> bool:
    """Whether any facility could be matched to it: it needs a known process that is made,
    not bought (the matcher's own rule, stated on the registry's side)."""
    entries = vocabulary.processes().entries
    return any(t.known and (t.id not in entries or entries[t.id].requirement)
               for t in design.processes)


def _inferred(kind: vocabulary.TermKind, term: Term) -> dict[str, Any]:
    return {"kind": kind, "id": term.id, "label": term.label, "field": term.source,
            "evidence": term.evidence, "confidence": term.confidence}


def lines(result: dict[str, Any]) -> list[str]:
    """The report as a person reads it in a terminal."""
    head = f"{result['kind']} {result['id']!r}: {result['name']}"
    out = [head]
    entity = result["entity"]
    for what in ("processes", "materials"):
        stated = [t["label"] for t in entity.get(what, []) if not t.get("inferred")]
        if stated:
            out.append(f"  {what}: {', '.join(stated)}")
    for item in result.get("inferred", []):
        out.append(f"  inferred {item['kind']} {item['label']} ({item['confidence']:.2f})"
                   f" from {item['field']}: {item['evidence']!r}")
    for size in result.get("sizes", []):
        out.append(f"  size need {size['size_mm']} for {', '.join(size['processes'])}:"
                   f" {size['evidence']!r}")
    if result.get("matchable") is False:
        out.append("  needs information: no facility can be matched to it yet")
    out.extend(f"  warning: {w}" for w in result["warnings"])
    return out
