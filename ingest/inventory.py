"""Machine inventories as CSV, one row per machine with the lab it stands in (class,
brand, model, lab slug or name, coordinates; e.g. the fablabs.io machines export on the
IoP Alliance OKW map) -> one OKW facility per lab with its equipment. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from contracts.events import EntityKind
from contracts.vocabulary import processes
from ingest.csvtext import Table, fold
from ingest.identity import derive_id
from ingest.places import cell, compact, gps
from ingest.record import Record

# Column names each role goes by in the inventories we know, most specific first.
CLASS = ("class_1", "machine_class", "class", "machine_type", "equipment_type", "type",
         "category")
LAB_KEY = ("lab_slug", "slug", "lab_id", "facility_id")
LAB_NAME = ("lab_name", "lab", "facility_name", "facility", "makerspace", "space")
MODEL = ("model", "machine_name", "machine", "name")
BRAND = ("brand", "make", "manufacturer")
LAT, LON = ("latitude", "lat"), ("longitude", "lon", "lng")
CITY, REGION, COUNTRY = ("city", "town"), ("county", "region", "state"), (
    "country_code", "country")
QUANTITY = ("qty", "quantity", "count")
# fablabs.io machine classes the vocabulary does not spell (yet); see the vocabulary
# note in the import report. "scanner" and "other" name no manufacturing process.
CLASSES = {"three_d_printer": "3d-printing", "3d_printer": "3d-printing"}


def _pick(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((columns[n] for n in names if n in columns), None)


def looks_like(columns: set[str]) -> bool:
    """A machine class, the lab it is in, and what machine it is."""
    has = columns.__contains__
    return (any(map(has, CLASS)) and any(map(has, LAB_KEY + LAB_NAME))
            and any(map(has, MODEL + BRAND)))


def records(name: str, table: Table) -> Iterator[Record]:
    by_fold = {fold(h): h for h in reversed(table.header)}  # first of equal names wins
    role = {r: _pick(by_fold, names) for r, names in (
        ("class", CLASS), ("key", LAB_KEY), ("lab", LAB_NAME), ("model", MODEL),
        ("brand", BRAND), ("lat", LAT), ("lon", LON), ("city", CITY), ("region", REGION),
        ("country", COUNTRY), ("qty", QUANTITY))}
    # "name" is the machine when a lab column exists (fablabs.io: name=model, lab=lab).
    if role["model"] is not None and role["model"] in (role["lab"], role["key"]):
        role["model"] = None

    def get(row: dict[str, str], what: str) -> str | None:
        column = role[what]
        return cell(row.get(column)) if column else None

    labs: dict[str, list[dict[str, str]]] = {}
    for line, row in table.rows:
        lab = get(row, "key") or get(row, "lab")
        if lab is None:
            yield Record(EntityKind.facility, f"{name}:{line}", error="machine row names no lab")
            continue
        labs.setdefault(lab.lower(), []).append(row)
    for rows in labs.values():
        yield _facility(name, rows, get)


def _facility(name: str, rows: list[dict[str, str]], get: Any) -> Record:
    def first(what: str) -> str | None:
        return next((v for v in (get(r, what) for r in rows) if v), None)

    key = first("key")
    label = first("lab") or key or ""
    warnings: list[str] = []
    equipment = [_machine(row, get) for row in rows]
    doc = compact({
        "name": label,
        "facility_status": "Active",
        "location": {
            "address": {"city": first("city"), "region": first("region"),
                        "country": first("country")},
            "gps_coordinates": _coordinates(rows, get, warnings),
        },
        "equipment": equipment,
        "source": {"dataset": "machine-inventory", "lab": key},
    })
    return Record(EntityKind.facility, f"{name}:{label}",
                  entity_id=derive_id(label, key or "inventory"), document=doc, warnings=warnings)


def _coordinates(rows: list[dict[str, str]], get: Any, warnings: list[str]) -> str | None:
    for row in rows:
        if get(row, "lat") and get(row, "lon"):
            return gps(get(row, "lat"), get(row, "lon"), warnings)
    warnings.append("no coordinates: not found by distance queries")
    return None


def _machine(row: dict[str, str], get: Any) -> dict[str, Any]:
    kind = get(row, "class")
    item: dict[str, Any] = {
        "equipment_type": kind.replace("_", " ") if kind else None,
        "make": get(row, "brand"),
        "model": get(row, "model"),
        "manufacturing_process": process_of(kind),
    }
    qty = get(row, "qty") or ""
    item["quantity"] = int(qty) if qty.isdigit() and 0 < int(qty) < 10_000 else 1
    return {k: v for k, v in item.items() if v is not None}


def process_of(kind: str | None) -> str | None:
    """The vocabulary's process for a machine class, or None (a scanner makes nothing)."""
    if not kind:
        return None
    entry = processes().resolve(kind)
    if entry is not None:
        return entry.id
    return CLASSES.get(kind.strip().lower().replace(" ", "_"))
