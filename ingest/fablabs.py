"""The fablabs.io export (as on the IoP Alliance OKW map) -> OKW facility documents."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

from contracts.events import EntityKind
from ingest.csvtext import Table
from ingest.identity import derive_id
from ingest.record import Record

CAPABILITIES = {
    "three_d_printing": "3d-printing",
    "cnc_milling": "cnc-milling",
    "circuit_production": "pcb-fabrication",
    "laser": "laser-cutting",
    "precision_milling": "precision-milling",
    "vinyl_cutting": "vinyl-cutting",
}
STATUSES = {"active": "Active", "planned": "Planned", "closed": "Closed"}


def lab_id(source_id: str | None) -> str | None:
    """fablabs.io's own number as our id, so its CSV export and its API's lab list update
    one entity; None where the lab has no number."""
    return f"fablabs-{source_id}" if source_id and source_id.isdigit() else None


def records(name: str, table: Table) -> Iterator[Record]:
    for line, row in table.rows:
        yield _record(f"{name}:{line}", row)


def _record(where: str, row: dict[str, Any]) -> Record:
    label = (row.get("name") or "").strip()
    if not label:
        return Record(EntityKind.facility, where, error="no name")
    warnings = []
    if any("\ufffd" in (v or "") for v in row.values() if isinstance(v, str)):
        warnings.append("broken character encoding in the source row; text kept as read")
    status = STATUSES.get((row.get("activity_status") or "").strip().lower())
    if status is None:
        return Record(
            EntityKind.facility, where,
            error=f"unknown activity_status {row.get('activity_status')!r}",
        )
    try:
        capabilities = ast.literal_eval(row.get("capabilities") or "[]")
    except (ValueError, SyntaxError):
        return Record(EntityKind.facility, where, error="capabilities column is not a list")
    unknown = [c for c in capabilities if c not in CAPABILITIES]
    if unknown:
        warnings.append(f"unknown capabilities kept as given: {unknown}")
    location: dict[str, Any] = {
        "address": {
            "street": ", ".join(p for p in (row.get("address_1"), row.get("address_2")) if p),
            "city": row.get("city") or None,
            "region": row.get("county") or None,
            "country": row.get("country_code") or None,
            "postcode": row.get("postal_code") or None,
        }
    }
    lat, lon = (row.get("latitude") or "").strip(), (row.get("longitude") or "").strip()
    if lat and lon:
        location["gps_coordinates"] = f"{lat}, {lon}"
    else:
        warnings.append("no coordinates: not found by distance queries")
    source_id = (row.get("") or row.get("id") or "").strip()
    doc = {
        "name": label,
        "location": location,
        "facility_status": status,
        "access_type": "Shared space",
        "manufacturing_processes": [CAPABILITIES.get(c, c) for c in capabilities],
        "links": _links(row.get("links")),
        "source": {"dataset": "fablabs.io", "id": source_id},
    }
    return Record(
        EntityKind.facility,
        where,
        entity_id=lab_id(source_id) or derive_id(label, source_id),
        document=doc,
        warnings=warnings,
    )


def _links(value: str | None) -> list[str]:
    try:
        items = ast.literal_eval(value or "[]")
    except (ValueError, SyntaxError):
        return []
    return [i["url"] for i in items if isinstance(i, dict) and isinstance(i.get("url"), str)]
