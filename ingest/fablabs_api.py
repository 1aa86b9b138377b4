"""The fablabs.io API's lab list (api.fablabs.io/0/labs.json, one object per lab: id,
name, kind_name, slug, address_1.., latitude/longitude, capabilities, activity_status,
links) -> one OKW facility per lab. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from contracts.events import EntityKind
from ingest.fablabs import CAPABILITIES, lab_id
from ingest.places import cell, compact, gps, urls
from ingest.record import Record

# fablabs.io's activity_status values; "corona" marked labs shut by the pandemic.
STATUSES = {"active": "Active", "planned": "Planned", "closed": "Closed",
            "corona": "Temporary Closure", "temporarily_closed": "Temporary Closure"}
KEYS = {"name", "slug", "kind_name", "capabilities", "activity_status", "country_code"}


def looks_like(item: dict[str, Any]) -> bool:
    """A lab object: named, with at least two of the fields only fablabs.io gives labs."""
    return "name" in item and len(KEYS & set(item)) >= 3


def records(name: str, items: list[Any]) -> Iterator[Record]:
    for index, item in enumerate(items):
        yield _record(f"{name}[{index}]", item)


def _record(where: str, item: Any) -> Record:
    if not isinstance(item, dict):
        return Record(EntityKind.facility, where, error="entry is not an object")
    if isinstance(item.get("attributes"), dict):  # the v2 JSON:API shape nests the lab
        item = {"id": item.get("id"), **item["attributes"]}
    label = cell(item.get("name"))
    if label is None:
        return Record(EntityKind.facility, where, error="lab has no name")
    warnings: list[str] = []
    raw_status = cell(item.get("activity_status"))
    status = STATUSES.get((raw_status or "").lower())
    if raw_status and status is None:
        warnings.append(f"unknown activity_status {raw_status[:40]!r}; read as Active")
    capabilities = [c for c in item.get("capabilities") or [] if isinstance(c, str)]
    unknown = [c for c in capabilities if c not in CAPABILITIES]
    if unknown:
        warnings.append(f"unknown capabilities kept as given: {unknown[:10]}")
    slug = cell(item.get("slug"))
    links = urls(item.get("links"))
    if slug:
        links.insert(0, f"https://www.fablabs.io/labs/{slug}")
    source_id = cell(item.get("id"))
    doc = compact({
        "name": label,
        "facility_status": status,
        "access_type": "Shared space",
        "location": {
            "address": {
                "street": ", ".join(p for p in (cell(item.get("address_1")),
                                                cell(item.get("address_2"))) if p),
                "city": cell(item.get("city")),
                "region": cell(item.get("county")),
                "country": cell(item.get("country_code")),
                "postcode": cell(item.get("postal_code")),
            },
            "gps_coordinates": gps(item.get("latitude"), item.get("longitude"), warnings),
        },
        "manufacturing_processes": [CAPABILITIES.get(c, c) for c in capabilities],
        "links": links[:20],
        "description": (cell(item.get("blurb")) or "")[:2000],
        "source": {"dataset": "fablabs.io", "id": source_id, "slug": slug,
                   "kind": cell(item.get("kind_name"))},
    })
    return Record(EntityKind.facility, where, entity_id=lab_id(source_id), document=doc,
                  warnings=warnings)
