"""What a reader finds in a file: one Record per design or facility, with the document to
send or why there is none. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contracts.errors import Position
from contracts.events import EntityKind


@dataclass
class Record:
    """One entity found in a file: a manifest to send, or why there is none."""

    kind: EntityKind
    where: str  # file, and row or index within it
    entity_id: str | None = None
    document: dict[str, Any] | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    position: Position | None = None  # where a syntax error is, when there is one


def kind_of_document(doc: dict[str, Any], name: str) -> EntityKind:
    """OKH manifests name a design (okhv/title); everything else is read as OKW."""
    if "okhv" in doc or "title" in doc or "okh-manifest-version" in doc:
        return EntityKind.design
    if ".okh." in name.lower() or name.lower().endswith(".toml"):
        return EntityKind.design
    return EntityKind.facility
