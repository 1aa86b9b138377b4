"""Which layout a file is in, decided by its content: the CSV header's columns, or the
parsed JSON/YAML's top-level shape and keys; then that layout's reader. Each layout has a
name and a one-line description, so a file we cannot place is one rejection listing them
all. Pure: bytes in, records out."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from contracts.errors import InvalidInput
from contracts.events import EntityKind
from ingest import fablabs, fablabs_api, field_ready, inventory, iopa, makerspaces
from ingest import mapped as mapped_csv
from ingest.csvtext import Table, decode, read_table
from ingest.documents import parse_document, parse_value
from ingest.fields import snake
from ingest.okw import KNOWN as OKW_KEYS
from ingest.record import Record, kind_of_document

Mapping = dict[str, str]


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    family: str  # "csv" (matched on the header) or "data" (on parsed JSON/YAML/TOML)


LAYOUTS = (
    Layout("okw-document", "one OKW facility or OKH design (a YAML, JSON or TOML mapping)",
           "data"),
    Layout("document-list", "a YAML or JSON list of OKW facility (or OKH design) documents",
           "data"),
    Layout("fablabs-api", "the fablabs.io API's lab list (JSON: name, kind_name, slug, "
           "capabilities, latitude/longitude, links)", "data"),
    Layout("iopa-records", "IoP Alliance normalised facility records (JSON: facility, "
           "location, address, region, geocoding)", "data"),
    Layout("field-ready", "Field Ready's design list (JSON: Name, Part No., Critical Tool, "
           "CAD_files)", "data"),
    Layout("fablabs-csv", "fablabs.io labs CSV (name, capabilities, activity_status, "
           "latitude, longitude)", "csv"),
    Layout("makerspace-machines-csv", "surveyed makerspace machines CSV (facility, type, "
           "brand, model, x_travel...)", "csv"),
    Layout("machine-inventory-csv", "machine inventory CSV, one row per machine "
           "(class_1/type, brand, model/name, lab/slug, latitude/longitude)", "csv"),
    Layout("mapped-csv", "any other CSV with --map COLUMN=FIELD (fields: "
           + ", ".join(mapped_csv.FIELDS) + ")", "csv"),
)


def known_layouts() -> str:
    return "; ".join(f"{lay.name}: {lay.description}" for lay in LAYOUTS)


def shown(names: list[str], most: int = 20) -> str:
    """Column names or keys as an error quotes them: a few, each cut short (a header cell
    may be 300 KB; the error must not be)."""
    cut = [n if len(n) <= 60 else n[:59] + "…" for n in names[:most]]
    return repr(cut)[:-1] + (", …]" if len(names) > most else "]")


def unknown(name: str, what: str, kind: EntityKind = EntityKind.facility) -> Record:
    return Record(kind, name, error=f"unknown layout ({what}); known layouts: "
                  + known_layouts())


def records(name: str, raw: bytes, mapping: Mapping | None = None) -> Iterator[Record]:
    """Every record in one file, whatever of the supported layouts its content is in;
    `mapping` ({column: field}) reads any other CSV. Never raises: what cannot be read is
    a Record with an error (one for the whole file when it is the file that is wrong)."""
    if mapping:
        bad = sorted({f for f in mapping.values() if f not in mapped_csv.FIELDS})
        if bad:
            yield Record(EntityKind.facility, name,
                         error=f"--map names unknown fields {bad}; fields: "
                         + ", ".join(mapped_csv.FIELDS))
            return
    family = syntax_of(name, raw)
    if family is None:
        yield unknown(name, "neither CSV, JSON, YAML nor TOML", "design")
        return
    if family == "csv":
        try:
            table = read_table(raw)
        except InvalidInput as exc:
            yield rejection("facility", name, exc)
            return
        yield from _csv(name, table, mapping)
        return
    try:
        value = parse_data(raw, family)
    except InvalidInput as exc:
        yield rejection(kind_of_document({}, name), name, exc)
        return
    yield from _data(name, raw, family, value)


def rejection(kind: EntityKind, name: str, exc: InvalidInput) -> Record:
    """One record for a file that cannot be read, with where in it the fault is."""
    where = exc.position
    message = exc.message
    if where is not None and f"line {where.line}" not in message:
        message += f" at line {where.line}, column {where.column}: {where.text!r}"
    return Record(kind, name, error=message, position=where)


# -- which syntax -------------------------------------------------------------------------

_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".json": "json", ".yml": "yaml",
             ".yaml": "yaml", ".toml": "toml"}


def syntax_of(name: str, raw: bytes) -> str | None:
    """The file's syntax: its suffix when it has a known one, else its first characters
    (a file saved as .txt or .dat is still read)."""
    lower = name.lower()
    for suffix, family in _SUFFIXES.items():
        if lower.endswith(suffix):
            return family
    head = decode(raw[:4096]).lstrip()
    if head[:1] in ("{", "["):
        return "json"
    first = head.split("\n", 1)[0]
    if head.startswith(("---", "- ", "#")) or re.match(r"^[\w\"' .-]+:(\s|$)", first):
        return "yaml"
    if any(d in first for d in (",", ";", "\t")):
        return "csv"
    return None


# -- JSON / YAML / TOML --------------------------------------------------------------------

def parse_data(raw: bytes, family: str) -> Any:
    """JSON, YAML or TOML -> value; a syntax error names its line and column."""
    return parse_value(raw, family)


_DOCUMENT_KEYS = set(OKW_KEYS) | {"title", "okhv", "okh_manifest_version", "repo",
                                  "version", "license", "licensor", "description"}


def _is_document(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    keys = {snake(str(k)) for k in item}
    return bool(keys & {"name", "title", "okhv", "okh_manifest_version"}) and len(
        keys & _DOCUMENT_KEYS) >= 2


def _is_field_ready(item: dict[str, Any]) -> bool:
    return "Name" in item and bool({"Part No.", "Critical Tool", "CAD_files", "Materials"}
                                   & set(item))


# In order: the first layout that most sampled items fit is the file's.
_LIST_LAYOUTS: tuple[tuple[str, Callable[[dict[str, Any]], bool],
                           Callable[[str, list[Any]], Iterator[Record]]], ...] = (
    ("fablabs-api", fablabs_api.looks_like, fablabs_api.records),
    ("iopa-records", iopa.looks_like, iopa.records),
    ("field-ready", _is_field_ready, field_ready.records),
    ("document-list", _is_document, lambda name, items: _documents(name, items)),
)


def _data(name: str, raw: bytes, family: str, value: Any) -> Iterator[Record]:
    if isinstance(value, dict):
        data = value.get("data")
        if isinstance(data, list) and data and all(
                isinstance(i, dict) and isinstance(i.get("attributes"), dict) for i in data):
            # fablabs.io API v2 (JSON:API): {"data": [{"type": "lab", "attributes": ...}]}
            items = [{"id": i.get("id"), **i["attributes"]} for i in data]
            if fablabs_api.looks_like(items[0]):
                yield from fablabs_api.records(name, items)
                return
        if not {snake(str(k)) for k in value} & {"name", "title", "okhv",
                                                  "okh_manifest_version"}:
            yield unknown(name, "a mapping that is neither an OKW facility nor an OKH "
                          "design: no name or title")
            return
        try:
            # The manifest parser's own checks (characters PostgreSQL cannot store...)
            doc = parse_document(raw, family)
        except InvalidInput as exc:
            yield rejection(kind_of_document({}, name), name, exc)
            return
        yield Record(kind_of_document(doc, name), name, document=doc)
        return
    if not isinstance(value, list):
        yield unknown(name, f"a single {type(value).__name__}, not a mapping or a list")
        return
    sample = [i for i in value[:50] if isinstance(i, dict)]
    if not sample:
        yield unknown(name, "a list holding no objects")
        return
    for _, fits, reader in _LIST_LAYOUTS:
        if sum(1 for i in sample if fits(i)) * 2 >= len(sample):
            yield from reader(name, value)
            return
    keys = sorted({str(k) for i in sample for k in i})
    yield unknown(name, f"a list of objects with keys {shown(keys, 12)}")


def _documents(name: str, items: list[Any]) -> Iterator[Record]:
    for index, item in enumerate(items):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            yield Record(EntityKind.facility, where, error="entry is not a mapping")
        else:
            yield Record(kind_of_document(item, ""), where, document=item)


# -- CSV -----------------------------------------------------------------------------------

def _csv(name: str, table: Table, mapping: Mapping | None) -> Iterator[Record]:
    missing = mapped_csv.missing_columns(mapping, table) if mapping else []
    if mapping and not missing:
        yield from mapped_csv.records(name, table, mapping)
        return
    found = _known_csv(name, table)
    if found is None:
        if mapping:
            yield Record(EntityKind.facility, name, error=f"--map names columns not in the header: "
                         f"{shown(missing)}; the header has {shown(table.header, 40)}")
        else:
            yield unknown(name, f"CSV columns {shown(table.header)}")
        return
    for record in found:
        if mapping:
            # --map was meant for another file of the import; say so, read this one anyway
            record.warnings.append(f"--map not applied (columns {missing} not in this "
                                   "file); read as a known layout")
        yield record


def _known_csv(name: str, table: Table) -> Iterator[Record] | None:
    columns = table.columns
    if "capabilities" in columns and "activity_status" in columns:
        return fablabs.records(name, table)
    if "x_travel" in columns and "facility" in columns:
        return makerspaces.records(name, table)
    if inventory.looks_like(columns):
        return inventory.records(name, table)
    return None
