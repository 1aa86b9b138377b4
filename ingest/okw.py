"""OKW facility records (JSON or YAML; snake_case, camelCase or the spec's human names)
-> Facility."""

from __future__ import annotations

import re
from typing import Any

from contracts.errors import InvalidInput
from contracts.events import EntityKind
from contracts.models import Address, Box, Equipment, Facility, FacilityStatus, Location, Term
from ingest import inference
from ingest.fields import (
    MAX_LIST,
    box_from_text,
    build,
    length,
    most_specific,
    snake,
    terms,
    text,
    text_list,
)
from ingest.identity import document_id

STATUSES = {
    "active": FacilityStatus.active,
    "planned": FacilityStatus.planned,
    "temporary closure": FacilityStatus.temporary_closure,
    "temporarily closed": FacilityStatus.temporary_closure,
    "closed": FacilityStatus.closed,
    "inactive": FacilityStatus.closed,
}
KNOWN = {
    "id",
    "name",
    "location",
    "facility_status",
    "access_type",
    "manufacturing_processes",
    "equipment",
    "typical_materials",
    "certifications",
    "owner",
    "contact",
    "links",
    "latitude",
    "longitude",
    "gps_coordinates",
    "coordinates",
    "affiliations",
}


def read_facility(doc: dict[str, Any], *, facility_id: str | None = None) -> Facility:
    doc = {snake(str(k)): v for k, v in doc.items()}
    warnings: list[str] = []
    name = text(doc.get("name"), "name", required=True)
    status = _status(doc.get("facility_status"))
    equipment_raw = doc.get("equipment") or []
    if not isinstance(equipment_raw, list):
        raise InvalidInput("must be a list", field="equipment", code="type")
    if len(equipment_raw) > MAX_LIST:
        raise InvalidInput(f"more than {MAX_LIST} items", field="equipment", code="too_long")
    equipment = [_equipment(e, f"equipment[{i}]", warnings) for i, e in enumerate(equipment_raw)]
    offered = terms(
        "process",
        _names(doc.get("manufacturing_processes"), "manufacturing_processes"),
        source="manufacturing_processes",
        warnings=warnings,
    )
    offered += [t for e in equipment for t in e.processes]
    # what an offer brings with it, as for a design (a place making PCBs populates them)
    offered += [i for t in offered for i in inference.implications(t)]
    materials = terms(
        "material",
        _names(doc.get("typical_materials"), "typical_materials"),
        source="typical_materials",
        warnings=warnings,
    )
    return build(
        Facility,
        id=facility_id or document_id(EntityKind.facility, doc),
        name=name or "",
        status=status,
        access_type=text(doc.get("access_type"), "access_type"),
        location=_location(doc),
        processes=_dedupe(offered),
        materials=most_specific("material", materials),
        equipment=equipment,
        certifications=text_list(doc.get("certifications"), "certifications"),
        owner=_owner(doc.get("owner")),
        links=_links(doc.get("links")),
        warnings=warnings[:200],
        extra={k: v for k, v in doc.items() if k not in KNOWN},
    )


def _dedupe(found: list[Term]) -> list[Term]:
    # A facility's offer is not reduced to the most specific: offering "3D printing"
    # and "FDM" are two statements and both may matter to matching.
    seen: dict[str, Term] = {}
    for t in found:
        seen.setdefault(t.id, t)
    return list(seen.values())


def _names(value: Any, field: str) -> list[str]:
    out = []
    for item in text_list(value, field):
        out += [p.strip() for p in item.split(",") if p.strip()] if "http" not in item else [item]
    return out


def _status(value: Any) -> FacilityStatus:
    raw = text(value, "facility_status")
    if raw is None:
        return FacilityStatus.active
    status = STATUSES.get(re.sub(r"[\s_\-]+", " ", raw.lower()))
    if status is None:
        raise InvalidInput(
            f"unknown status {raw[:40]!r}; use Active, Planned, Temporary Closure or Closed",
            field="facility_status",
            code="invalid",
        )
    return status


def _location(doc: dict[str, Any]) -> Location:
    loc = doc.get("location") or {}
    if isinstance(loc, str):
        loc = {"address": loc}
    if not isinstance(loc, dict):
        raise InvalidInput("must be a mapping", field="location", code="type")
    loc = {snake(str(k)): v for k, v in loc.items()}
    lat, lon = _coordinates(loc, doc)
    return Location(address=_address(loc.get("address")), lat=lat, lon=lon)


def _coordinates(loc: dict[str, Any], doc: dict[str, Any]) -> tuple[float | None, float | None]:
    gps = loc.get("gps_coordinates") or doc.get("gps_coordinates")
    coords = loc.get("coordinates") or doc.get("coordinates")
    if isinstance(gps, str) and gps.strip():
        pieces = [p for p in re.split(r"[,\s]+", gps.strip()) if p]
        if len(pieces) != 2:
            raise InvalidInput("must be 'lat, lon'", field="location.gps_coordinates")
        return _lat(pieces[0], "location.gps_coordinates"), _lon(
            pieces[1], "location.gps_coordinates"
        )
    if isinstance(coords, dict):
        c = {str(k).lower(): v for k, v in coords.items()}
        return (
            _lat(c.get("lat", c.get("latitude")), "location.coordinates.lat"),
            _lon(c.get("lon", c.get("lng", c.get("longitude"))), "location.coordinates.lon"),
        )
    lat = loc.get("latitude", doc.get("latitude"))
    lon = loc.get("longitude", doc.get("longitude"))
    return _lat(lat, "location.latitude"), _lon(lon, "location.longitude")


def _lat(value: Any, field: str) -> float | None:
    return _degrees(value, field, 90)


def _lon(value: Any, field: str) -> float | None:
    return _degrees(value, field, 180)


def _degrees(value: Any, field: str, limit: float) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput("must be a number of degrees", field=field, code="type") from None
    if not -limit <= number <= limit:
        raise InvalidInput(f"must be within [-{limit:g}, {limit:g}]", field=field, code="range")
    return number


def _address(value: Any) -> Address | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Address(street=text(value, "location.address"))
    if not isinstance(value, dict):
        raise InvalidInput("must be a mapping or text", field="location.address", code="type")
    v = {snake(str(k)): x for k, x in value.items()}
    return Address(
        street=text(v.get("street") or v.get("street_address"), "location.address.street"),
        city=text(v.get("city") or v.get("locality"), "location.address.city"),
        region=text(v.get("region"), "location.address.region"),
        country=text(v.get("country") or v.get("country_code"), "location.address.country"),
        postcode=text(v.get("postcode") or v.get("postal_code"), "location.address.postcode"),
    )


def _equipment(raw: Any, field: str, warnings: list[str]) -> Equipment:
    if not isinstance(raw, dict):
        raise InvalidInput("must be a mapping", field=field, code="type")
    e = {snake(str(k)): v for k, v in raw.items()}
    kind = text(e.get("equipment_type"), f"{field}.equipment_type")
    named = _names(
        e.get("manufacturing_process") or e.get("manufacturing_processes"),
        f"{field}.manufacturing_process",
    )
    processes = terms("process", named, source=f"{field}.manufacturing_process", warnings=warnings)
    if not processes and kind:
        # "3D printer", "laser cutter": the machine names its process
        processes = [
            t
            for t in terms("process", [kind], source=f"{field}.equipment_type", warnings=[])
            if t.known
        ]
    materials = terms(
        "material",
        _names(e.get("materials_worked"), f"{field}.materials_worked"),
        source=f"{field}.materials_worked",
        warnings=warnings,
    )
    quantity = e.get("quantity", 1)
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise InvalidInput("must be a whole number", field=f"{field}.quantity", code="type")
    return Equipment(
        equipment_type=kind,
        processes=processes,
        make=text(e.get("make") or e.get("manufacturer"), f"{field}.make"),
        model=text(e.get("model"), f"{field}.model"),
        materials=materials,
        working_volume=_volume(e, field),
        quantity=quantity,
    )


def _volume(e: dict[str, Any], field: str) -> Box | None:
    travel = [length(e.get(f"{axis}_travel"), f"{field}.{axis}_travel") for axis in "xyz"]
    if any(t is not None for t in travel):
        return Box(x_mm=travel[0], y_mm=travel[1], z_mm=travel[2])
    for key in ("build_volume", "working_volume", "bed_size"):
        value = e.get(key)
        if isinstance(value, str) and value.strip():
            return box_from_text(value, f"{field}.{key}")
        if isinstance(value, list) and 2 <= len(value) <= 3:
            sides = [length(v, f"{field}.{key}") for v in value]
            return Box(x_mm=sides[0], y_mm=sides[1], z_mm=sides[2] if len(sides) == 3 else None)
        if isinstance(value, dict):
            v = {str(k).lower(): x for k, x in value.items()}
            unit = str(v.get("unit", "mm"))
            return Box(
                **{f"{a}_mm": length(v.get(a), f"{field}.{key}.{a}", unit=unit) for a in "xyz"}
            )
    return None


def _owner(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("name")
    return text(value, "owner")


def _links(value: Any) -> dict[str, str]:
    urls = (
        text_list(value, "links")
        if not isinstance(value, dict)
        else [str(v) for v in value.values()]
    )
    return {f"link{i}": u[:1000] for i, u in enumerate(urls[:20])}
