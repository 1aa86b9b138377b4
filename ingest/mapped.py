"""Any other CSV, read through a column -> field mapping (`makelocal import --map
column=field`): rows become OKW facilities; rows naming the same facility (same id, or
same name and place) are one facility, each row with a machine adding to its equipment.
Pure."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from contracts.errors import InvalidInput
from contracts.events import EntityKind
from ingest.csvtext import Table, fold
from ingest.identity import derive_id, source_id
from ingest.inventory import process_of
from ingest.places import cell, compact, gps, urls
from ingest.record import Record

# The fields a column may be mapped to: the OKW facility document's, flattened.
FIELDS = {
    "name": "the facility's name (required)",
    "id": "the facility's own id; rows with the same id are one facility",
    "lat": "latitude in degrees",
    "lon": "longitude in degrees",
    "coordinates": "'lat, lon' in one cell",
    "street": "street address",
    "city": "city or town",
    "region": "region, state or county",
    "postcode": "postal code",
    "country": "country name or code",
    "status": "facility status: Active, Planned, Temporary Closure or Closed",
    "access_type": "access type: Public, Membership, Shared space, Restricted...",
    "processes": "manufacturing processes, separated by , ; or |",
    "materials": "typical materials, separated by , ; or |",
    "equipment_type": "one machine's kind (one row per machine)",
    "make": "one machine's maker",
    "model": "one machine's model",
    "quantity": "how many of that machine",
    "link": "a web address",
    "description": "free text",
    "owner": "the owning organisation",
}
# Spellings of the same fields as the OKW document writes them.
ALIASES = {
    "latitude": "lat", "longitude": "lon", "lng": "lon", "gps_coordinates": "coordinates",
    "facility_status": "status", "manufacturing_processes": "processes",
    "typical_materials": "materials", "manufacturer": "make", "brand": "make",
    "url": "link", "website": "link", "postal_code": "postcode", "state": "region",
}
MACHINE = ("equipment_type", "make", "model")


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """["Lab Name=name", ...] -> {column: field}; InvalidInput naming a pair without "=",
    or a field we do not know (with the list of those we do)."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        column, sep, field = pair.rpartition("=")
        if not sep or not column.strip() or not field.strip():
            raise InvalidInput(f"--map {pair!r}: expected COLUMN=FIELD", field="--map")
        wanted = fold(field)
        target = ALIASES.get(wanted, wanted)
        if target not in FIELDS:
            raise InvalidInput(
                f"--map {pair!r}: unknown field {field.strip()!r}; fields: "
                + ", ".join(FIELDS), field="--map")
        mapping[column.strip()] = target
    if mapping and "name" not in mapping.values():
        raise InvalidInput("--map must say which column is the facility's name "
                           "(COLUMN=name)", field="--map")
    return mapping


def missing_columns(mapping: dict[str, str], table: Table) -> list[str]:
    """The mapped columns the header does not have (compared case- and space-blind)."""
    return [c for c in mapping if fold(c) not in table.columns]


def records(name: str, table: Table, mapping: dict[str, str]) -> Iterator[Record]:
    twice = [c for c in mapping if sum(fold(h) == fold(c) for h in table.header) > 1]
    if twice:  # which of the two is meant cannot be guessed, and a guess loses data
        yield Record(EntityKind.facility, name, error=f"--map names column {twice[0][:60]!r}, which"
                     " the header has more than once; rename one of them")
        return
    by_fold = {fold(h): h for h in reversed(table.header)}
    columns = {by_fold[fold(c)]: f for c, f in mapping.items()}
    groups: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, row in table.rows:
        values: dict[str, str] = {}
        for column, field in columns.items():
            value = cell(row.get(column))
            if value is not None:
                values.setdefault(field, value)
        if "name" not in values:
            yield Record(EntityKind.facility, f"{name}:{line}", error="row has no facility name "
                         f"(column {next(c for c, f in columns.items() if f == 'name')!r})")
            continue
        key = values.get("id") or "\x1f".join(
            values.get(f, "") for f in ("name", "coordinates", "lat", "lon", "city"))
        groups.setdefault(key, []).append((line, values))
    for rows in groups.values():
        yield _facility(name, rows)


def _facility(name: str, rows: list[tuple[int, dict[str, str]]]) -> Record:
    def first(field: str) -> str | None:
        return next((v[field] for _, v in rows if field in v), None)

    warnings: list[str] = []
    label = first("name") or ""
    coordinates = first("coordinates")
    if coordinates:
        pieces = [p for p in re.split(r"[,;\s]+", coordinates) if p]
        where = gps(*pieces, warnings) if len(pieces) == 2 else None
        if len(pieces) != 2:
            warnings.append(f"coordinates {coordinates[:40]!r} are not 'lat, lon'; left out")
    else:
        where = gps(first("lat"), first("lon"), warnings)
    equipment = [_machine(v, warnings) for _, v in rows if any(f in v for f in MACHINE)]
    doc = compact({
        "name": label,
        "facility_status": first("status"),
        "access_type": first("access_type"),
        "location": {
            "address": {f: first(f) for f in ("street", "city", "region", "postcode",
                                               "country")},
            "gps_coordinates": where,
        },
        "manufacturing_processes": _union(rows, "processes"),
        "typical_materials": _union(rows, "materials"),
        "equipment": equipment,
        "links": urls([v["link"] for _, v in rows if "link" in v])[:20],
        "description": (first("description") or "")[:2000],
        "owner": first("owner"),
    })
    own_id = first("id")
    entity_id = source_id("csv", own_id) if own_id else derive_id(
        label, where or first("city") or "")
    return Record(EntityKind.facility, f"{name}:{rows[0][0]}", entity_id=entity_id, document=doc,
                  warnings=warnings)


def _union(rows: list[tuple[int, dict[str, str]]], field: str) -> list[str]:
    seen: dict[str, str] = {}
    for _, values in rows:
        for item in re.split(r"[,;|]", values.get(field, "")):
            if item.strip():
                seen.setdefault(item.strip().lower(), item.strip())
    return list(seen.values())


def _machine(values: dict[str, str], warnings: list[str]) -> dict[str, Any]:
    qty = values.get("quantity", "1")
    if not (qty.isdigit() and 0 < int(qty) < 10_000):
        warnings.append(f"quantity {qty[:20]!r} is not a count; read as 1")
        qty = "1"
    kind = values.get("equipment_type")
    return {"equipment_type": kind, "make": values.get("make"), "model": values.get("model"),
            "manufacturing_process": process_of(kind), "quantity": int(qty)}
