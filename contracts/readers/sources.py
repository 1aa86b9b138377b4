"""Files people hand to `makelocal import` -> records to send to the registry. Pure:
takes a file's name and bytes, yields one Record per design or facility in it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from contracts.errors import Position

Kind = Literal["design", "facility"]


@dataclass
class Record:
    """One entity found in a file: a manifest to send, or why there is none."""

    kind: Kind
    where: str  # file, and row or index within it
    entity_id: str | None = None
    document: dict[str, Any] | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    position: Position | None = None  # where a syntax error is, when there is one


def records(name: str, raw: bytes, mapping: dict[str, str] | None = None,
            ) -> Iterator[Record]:
    """Every record in one file, whatever of the supported layouts its content is in
    (contracts.readers.layouts decides); `mapping` ({column: field}) reads any other CSV."""
    from contracts.readers.layouts import read

    yield from read(name, raw, mapping)


def kind_of_document(doc: dict[str, Any], name: str) -> Kind:
    """OKH manifests name a design (okhv/title); everything else is read as OKW."""
    if "okhv" in doc or "title" in doc or "okh-manifest-version" in doc:
        return "design"
    if ".okh." in name.lower() or name.lower().endswith(".toml"):
        return "design"
    return "facility"

