"""Files people hand to `makelocal import` -> records to send to the registry. Pure:
takes a file's name and bytes, yields one Record per design or facility in it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from contracts.errors import InvalidInput
from contracts.readers.documents import SUFFIXES, parse_document

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


def records(name: str, raw: bytes) -> Iterator[Record]:
    """Every record in one file, whatever of the supported formats it is."""
    from contracts.readers import fablabs, field_ready, makerspaces

    lower = name.lower()
    if lower.endswith(".csv"):
        header = raw[:4096].decode("utf-8-sig", "replace").splitlines()[0:1]
        columns = header[0].lower() if header else ""
        if "capabilities" in columns and "activity_status" in columns:
            yield from fablabs.records(name, raw)
        elif "x_travel" in columns and "facility" in columns:
            yield from makerspaces.records(name, raw)
        else:
            yield Record(
                "facility",
                name,
                error="unknown CSV layout (expected the fablabs.io or makerspace machines columns)",
            )
        return
    if lower.endswith(".json") and raw.lstrip()[:1] == b"[":
        yield from field_ready.records(name, raw)
        return
    fmt = next((f for s, f in SUFFIXES.items() if lower.endswith(s)), None)
    if fmt is None:
        yield Record("design", name, error="not a supported file type")
        return
    try:
        doc = parse_document(raw, fmt)
    except InvalidInput as exc:
        yield Record(kind_of_document({}, name), name, error=exc.message)
        return
    yield Record(kind_of_document(doc, name), name, document=doc)


def kind_of_document(doc: dict[str, Any], name: str) -> Kind:
    """OKH manifests name a design (okhv/title); everything else is read as OKW."""
    if "okhv" in doc or "title" in doc or "okh-manifest-version" in doc:
        return "design"
    if ".okh." in name.lower() or name.lower().endswith(".toml"):
        return "design"
    return "facility"


def load_json_list(name: str, raw: bytes) -> list[Any]:
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"{name}: not JSON: {str(exc)[:120]}") from None
    if not isinstance(data, list):
        raise InvalidInput(f"{name}: expected a JSON list")
    return data
