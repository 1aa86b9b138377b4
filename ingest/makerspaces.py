"""The surveyed makerspace machines list (one row per machine) -> one OKW facility per
makerspace, with its equipment and their x/y/z travel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from contracts.events import EntityKind
from ingest.csvtext import Table
from ingest.identity import derive_id
from ingest.record import Record

TYPES = {
    ("3d_printer", "fdm"): "fdm",
    ("3d_printer", "sla"): "sla",
    ("3d_printer", ""): "3d-printing",
    ("laser", "cutter"): "laser-cutting",
    ("laser", "engraver"): "laser-engraving",
    ("cnc", "router"): "cnc-milling",
    ("cnc", "milling"): "cnc-milling",
    ("cnc", "plasma"): "plasma-cutting",
    ("cnc", "lathe"): "cnc-turning",
    ("vinyl", "cutter"): "vinyl-cutting",
}


def records(name: str, table: Table) -> Iterator[Record]:
    by_facility: dict[str, dict[str, Any]] = {}
    for row_no, row in table.rows:
        facility = (row.get("facility") or "").strip()
        if not facility:
            yield Record(EntityKind.facility, f"{name}:{row_no}",
                         error="machine row names no facility")
            continue
        entry = by_facility.setdefault(facility, {"rows": [], "lat": None, "lon": None})
        entry["rows"].append(row)
        entry["lat"] = entry["lat"] or (row.get("latitude") or "").strip() or None
        entry["lon"] = entry["lon"] or (row.get("longitude") or "").strip() or None
    for facility, entry in by_facility.items():
        yield _facility(name, facility, entry)


def _facility(name: str, facility: str, entry: dict[str, Any]) -> Record:
    warnings: list[str] = []
    equipment = []
    for row in entry["rows"]:
        kind = (
            (row.get("type") or "").strip().lower(),
            (row.get("sub_type_1") or "").strip().lower(),
        )
        process = TYPES.get(kind) or TYPES.get((kind[0], ""))
        item: dict[str, Any] = {
            "equipment_type": " ".join(k for k in kind if k) or None,
            "make": (row.get("brand") or "").strip() or None,
            "model": (row.get("model") or "").strip() or None,
        }
        if process:
            item["manufacturing_process"] = process
        qty = (row.get("qty") or "").strip()
        item["quantity"] = int(qty) if qty.isdigit() and int(qty) > 0 else 1
        for axis in "xyz":
            value = (row.get(f"{axis}_travel") or "").strip()
            if value and value.lower() != "none":
                item[f"{axis}_travel"] = value
        equipment.append(item)
    location: dict[str, Any] = {}
    if entry["lat"] and entry["lon"]:
        location["gps_coordinates"] = f"{entry['lat']}, {entry['lon']}"
    else:
        warnings.append("no coordinates: not found by distance queries")
    doc = {
        "name": facility,
        "facility_status": "Active",
        "location": location,
        "equipment": equipment,
    }
    return Record(
        EntityKind.facility,
        f"{name}:{facility}",
        entity_id=derive_id(facility, "ima-survey"),
        document=doc,
        warnings=warnings,
    )
