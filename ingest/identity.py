"""The id an entity gets when the person sending it gives none: the same record gives the
same id on every import, so a re-import updates the entity instead of adding a copy.
Pure. Ids already stored were made by these functions: changing what they return orphans
every stored entity whose id was derived, so tests pin real ones (tests/unit/test_identity.py)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from contracts.events import EntityKind
from ingest.fields import snake


def document_id(kind: EntityKind, doc: dict[str, Any]) -> str:
    """The id of a design or facility document: its own `id` when it has one, else one
    derived from its name and where it is (a design's repository, a facility's place).
    The registry, the importer and the readers all ask here, so they agree."""
    if kind == EntityKind.design:
        return _design_id(doc)
    return _facility_id({snake(str(k)): v for k, v in doc.items()})


def derive_id(name: str, *salt: str | None) -> str:
    """A stable id from a name and what distinguishes it (repo URL, source row)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48] or "entity"
    digest = hashlib.sha256("\x1f".join([name, *(s or "" for s in salt)]).encode()).hexdigest()
    return f"{slug}-{digest[:8]}"


def source_id(prefix: str, raw: str | None) -> str | None:
    """A registry id (letters, digits, - and _; at most 64) from a source's own id."""
    if not raw:
        return None
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")
    return f"{prefix}-{safe}"[:64] if safe else None


def _design_id(doc: dict[str, Any]) -> str:
    given = doc.get("id")
    if isinstance(given, str) and given:
        return given
    name = doc.get("name") or doc.get("title") or ""
    where = doc.get("repo") or doc.get("project-link") or doc.get("documentation-home")
    return derive_id(str(name), str(where) if where else None)


def _facility_id(doc: dict[str, Any]) -> str:
    """`doc` with its keys in snake_case, as OKW's are read."""
    given = doc.get("id")
    if isinstance(given, str) and given:
        return given
    loc = doc.get("location")
    where = str(loc)[:200] if loc is not None else str(doc.get("gps_coordinates", ""))
    return derive_id(str(doc.get("name", "")), where)
