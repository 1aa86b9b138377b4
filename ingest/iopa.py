"""The IoP Alliance's normalised facility records (okw_data_management pipelines: one
object per facility holding facility, location, address, region and geocoding tables
joined by ids) -> one OKW facility each. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from contracts.events import EntityKind
from ingest.identity import source_id
from ingest.places import cell, compact, gps, urls
from ingest.record import Record


def looks_like(item: dict[str, Any]) -> bool:
    return isinstance(item.get("facility"), dict) and (
        "region" in item or "location" in item or "geocoding" in item)


def records(name: str, items: list[Any]) -> Iterator[Record]:
    for index, item in enumerate(items):
        yield _record(f"{name}[{index}]", item)


def _part(item: dict[str, Any], key: str) -> dict[str, Any]:
    value = item.get(key)
    return value if isinstance(value, dict) else {}  # null when the source had none


def _record(where: str, item: Any) -> Record:
    if not isinstance(item, dict):
        return Record(EntityKind.facility, where, error="entry is not an object")
    facility, region = _part(item, "facility"), _part(item, "region")
    address, geocoding = _part(item, "address"), _part(item, "geocoding")
    label = cell(facility.get("name"))
    if label is None:
        return Record(EntityKind.facility, where, error="facility has no name")
    warnings: list[str] = []
    facility_id = cell(facility.get("facility_id"))
    doc = compact({
        "name": label,
        "location": {
            "address": {
                "street": cell(address.get("extended") or address.get("street")),
                "city": cell(region.get("city_town")),
                "region": cell(region.get("state_region")),
                "country": cell(region.get("country")),
                "postcode": cell(address.get("zip_code")),
            },
            "gps_coordinates": gps(geocoding.get("latitude"), geocoding.get("longitude"),
                                   warnings),
        },
        "links": urls(facility.get("url")),
        "description": (cell(facility.get("description")) or "")[:2000],
        "source": {"dataset": "iopa-okw", "id": facility_id},
    })
    return Record(EntityKind.facility, where, entity_id=source_id("iopa", facility_id),
                  document=doc, warnings=warnings)
