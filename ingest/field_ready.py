"""Field Ready's design list (humanitarian spare parts) -> OKH v1 manifests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from contracts.events import EntityKind
from ingest.identity import derive_id
from ingest.record import Record


def records(name: str, items: list[Any]) -> Iterator[Record]:
    for index, item in enumerate(items):
        yield _record(f"{name}[{index}]", item)


def _record(where: str, item: Any) -> Record:
    if not isinstance(item, dict):
        return Record(EntityKind.design, where, error="entry is not an object")
    title = str(item.get("Name") or "").strip()
    if not title:
        return Record(EntityKind.design, where, error="no Name")
    part_no = str(item.get("Part No.") or "").strip()
    tool = str(item.get("Critical Tool") or "").strip()
    materials = [
        m.strip() for m in re.split(r",|/|;| and ", str(item.get("Materials") or "")) if m.strip()
    ]
    files = [f for f in item.get("CAD_files") or [] if isinstance(f, str)]
    doc: dict[str, Any] = {
        "okh-manifest-version": "1.0.0",
        "title": title,
        "description": str(item.get("Description") or "").strip() or None,
        "license": {"hardware": item.get("Licence") or None},
        "manufacturing-files": files,
        "materials": materials,
        "tool-list": [tool] if tool else [],
        "part-number": part_no or None,
        "oshwa-uid": item.get("OSHWA UID") or None,
    }
    if tool and tool.lower() not in ("n/a", "none"):
        doc["manufacturing-processes"] = [tool]
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", part_no)[:60]
    entity_id = f"fr-{safe}" if safe else derive_id(title, "field-ready")
    return Record(
        EntityKind.design,
        where,
        entity_id=entity_id,
        document={k: v for k, v in doc.items() if v not in (None, [], {})},
    )
