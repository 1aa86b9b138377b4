"""`makelocal import` on every public OKW source we know, from real files (or faithful
samples; see tests/data/okw/PROVENANCE.md): each file's layout is recognised by its
content, nearly every record becomes a facility, with equipment where the source lists
machines, coordinates kept and processes resolved."""

from __future__ import annotations

import json

import pytest

from contracts.errors import InvalidInput
from contracts.models import Facility
from ingest.layouts import LAYOUTS, records
from ingest.mapped import parse_mapping
from ingest.okw import read_facility
from ingest.record import Record
from makelocal.cli import main
from makelocal.importer import import_paths
from tests.support.helpers import InProcess
from tests.support.paths import TEST_DATA

SOURCES = TEST_DATA / "okw"
IMA_MAP = {"name": "name", "city": "city", "country": "country", "latitude": "lat",
           "longitude": "lon", "URL": "link"}


def read(name: str, raw: bytes | None = None,
         mapping: dict[str, str] | None = None) -> tuple[list[Record], list[Facility]]:
    """The file's records, and the facilities they make (as the registry reads them)."""
    found = list(records(name, (SOURCES / name).read_bytes() if raw is None else raw,
                         mapping))
    facilities = []
    for record in found:
        if record.document is not None and record.kind == "facility":
            try:
                facilities.append(read_facility(record.document))
            except InvalidInput:
                pass
    return found, facilities


@pytest.mark.parametrize(("name", "count", "machines", "located"), [
    ("fablabs_io_labs.json", 300, False, 0.75),
    ("iopa_facilities_source_01.json", 250, False, 0.8),
    ("fablabs_io_machines.csv", 425, True, 0.9),
    ("okw_mvp_machinery.csv", 63, True, 0.0),  # this inventory has no coordinates
    ("okw_facilities_demo_eu.json", 51, True, 1.0),
    ("okw_facilities_upload.yaml", 13, True, 1.0),
    ("okw_facility_makerspace.json", 1, True, 1.0),
    ("okw_facility_manufacturing.yaml", 1, True, 1.0),
])
def test_each_public_source_becomes_facilities(name: str, count: int, machines: bool,
                                               located: float) -> None:
    found, facilities = read(name)
    assert len(found) == count
    assert len(facilities) >= 0.95 * len(found), [r.error for r in found if r.error][:5]
    if machines:
        assert sum(1 for f in facilities if f.equipment) >= 0.9 * len(facilities)
    assert sum(1 for f in facilities if f.location.lat is not None) >= located * len(found)
    assert all(-90 <= f.location.lat <= 90 for f in facilities if f.location.lat is not None)


def test_fablabs_api_labs_keep_id_coordinates_capabilities_and_links() -> None:
    found, facilities = read("fablabs_io_labs.json")
    hamamatsu = next(r for r in found if r.document and "Hamamatsu" in r.document["name"])
    # the same entity the fablabs.io CSV's row 269 becomes: either export updates it
    assert hamamatsu.entity_id == "fablabs-269"
    lab = read_facility(hamamatsu.document)  # type: ignore[arg-type]
    assert (lab.location.lat, lab.location.lon) == (34.7107782, 137.7261082)
    assert {"3d-printing", "laser-cutting", "pcb-fabrication", "vinyl-cutting"} <= {
        t.id for t in lab.processes}
    assert all(t.known for t in lab.processes)
    assert "https://www.fablabs.io/labs/fablabhamamatsu" in lab.links.values()
    assert sum(1 for f in facilities if f.processes) >= 0.95 * len(facilities)


def test_iopa_records_keep_region_address_and_geocoding() -> None:
    found, _ = read("iopa_facilities_source_01.json")
    ping = next(r for r in found if r.document and r.document["name"] == "PiNG")
    assert ping.entity_id == "iopa-686c45f0-9a1f-4242-8e4d-65e6b6841575"
    facility = read_facility(ping.document)  # type: ignore[arg-type]
    assert facility.location.address is not None
    assert (facility.location.address.city, facility.location.address.country) == (
        "Nantes", "FR")
    assert facility.location.lat == 47.218371
    songpa = read_facility(found[0].document)  # type: ignore[arg-type]  # no geocoding
    assert songpa.location.lat is None and "no coordinates" in found[0].warnings[0]


def test_machine_inventory_is_grouped_into_one_facility_per_lab() -> None:
    found, facilities = read("fablabs_io_machines.csv")
    assert sum(len(f.equipment) for f in facilities) == 2248  # every machine row kept
    beach = next(f for f in facilities if f.name == "The Beach Lab x Europe")
    assert (beach.location.lat, beach.location.lon) == (41.2567952, 1.85712100000001)
    printer = next(e for e in beach.equipment if e.model == "ultimaker 2")
    assert (printer.make, [t.id for t in printer.processes]) == ("ultimaker", ["3d-printing"])
    assert {"3d-printing", "laser-cutting", "cnc-milling"} <= {t.id for t in beach.processes}
    assert sum(1 for f in facilities if f.processes) >= 0.95 * len(facilities)
    # a re-import gives every lab the same id again
    again, _ = read("fablabs_io_machines.csv")
    assert [r.entity_id for r in again] == [r.entity_id for r in found]


def test_layout_is_recognised_by_content_not_suffix() -> None:
    raw = (SOURCES / "fablabs_io_labs.json").read_bytes()
    found, facilities = read("labs-export.txt", raw)
    assert len(facilities) == 300 and found[0].entity_id == "fablabs-269"
    inventory = (SOURCES / "fablabs_io_machines.csv").read_bytes()
    _, labs = read("machines.dat", inventory)
    assert len(labs) == 425
    # and a JSON list is no longer taken for Field Ready designs
    _, iopa = read("records.json", (SOURCES / "iopa_facilities_source_01.json").read_bytes())
    assert len(iopa) == 250


@pytest.mark.parametrize("raw", [
    b"Model,Technology,Materials,Brand,Build Size\nA3,FDM,PLA,Leapfrog,200 mm\n"
    b"B4,SLA,Resin,Formlabs,145 mm\n",
    json.dumps([{"sku": i, "price": 3} for i in range(40)]).encode(),
    b"sku: 1\nprice: 3\n",
])
def test_a_file_in_no_known_layout_is_one_rejection_listing_the_layouts(raw: bytes) -> None:
    suffix = ".csv" if raw.startswith(b"Model") else ".json" if raw[:1] == b"[" else ".yml"
    found = list(records(f"catalogue{suffix}", raw))
    assert len(found) == 1 and found[0].document is None
    assert found[0].error is not None and found[0].error.startswith("unknown layout")
    assert all(layout.name in found[0].error for layout in LAYOUTS)


def test_csv_syntax_errors_name_line_column_and_text() -> None:
    lines = (SOURCES / "fablabs_io_machines.csv").read_text("utf-8").splitlines()[:4]
    unterminated = "\n".join([*lines, '4,"ultimaker 2,ultimaker,lab,three_d_printer'])
    found = list(records("machines.csv", unterminated.encode()))
    assert len(found) == 1
    position = found[0].position
    assert position is not None and (position.line, position.column) == (5, 3)
    assert position.text.startswith('4,"ultimaker 2')
    assert "unterminated quote" in (found[0].error or "") and "line 5, column 3" in (
        found[0].error or "")
    extra = "\n".join([*lines[:2], lines[2] + ",surplus"])
    position = next(records("machines.csv", extra.encode())).position
    assert position is not None and (position.line, position.column) == (
        3, len(lines[2]) + 2)
    stray = "\n".join([lines[0], '0,"ultimaker 2"x,ultimaker'])
    position = next(records("machines.csv", stray.encode())).position
    assert position is not None and (position.line, position.column) == (2, 16)  # the x


def test_json_and_yaml_syntax_errors_name_line_and_column() -> None:
    raw = (SOURCES / "iopa_facilities_source_01.json").read_bytes()[:1500]
    found = list(records("records.json", raw))
    assert len(found) == 1 and found[0].position is not None
    assert found[0].position.line > 1 and found[0].position.column >= 1
    position = next(records("f.yaml", b"- name: A\n  location: [1, 2\n- name: B\n")).position
    assert position is not None and position.line >= 2


def test_map_reads_any_other_csv() -> None:
    found, facilities = read("ima_makerspaces.csv", mapping=IMA_MAP)
    assert len(found) == len(facilities) == 56
    dti = next(f for f in facilities if f.name == "DTI Makerspace")
    assert (dti.location.lat, dti.location.lon) == (5.652746, -0.163267)
    assert dti.location.address is not None and dti.location.address.city == "Accra"
    assert list(dti.links.values()) == ["https://dtiafrica.com/"]
    # one row per machine: grouped by the mapped name, machines become equipment
    machinery = {"lab": "name", "class_1": "equipment_type", "brand": "make",
                 "name": "model", "country_code": "country"}
    _, labs = read("okw_mvp_machinery.csv", mapping=machinery)
    assert len(labs) == 63 and sum(len(f.equipment) for f in labs) == 288
    assert all(t.known for f in labs for e in f.equipment for t in e.processes)


def test_bad_mappings_are_refused_with_what_is_wrong() -> None:
    with pytest.raises(InvalidInput, match=r"unknown field 'nom'.*name, id, lat"):
        parse_mapping(["Lab=nom"])
    with pytest.raises(InvalidInput, match="COLUMN=FIELD"):
        parse_mapping(["Lab"])
    with pytest.raises(InvalidInput, match="name"):
        parse_mapping(["Lat=lat"])
    assert parse_mapping(["Lab Name=name", "Latitude=latitude"]) == {
        "Lab Name": "name", "Latitude": "lat"}
    found, _ = read("ima_makerspaces.csv", mapping={"Makerspace": "name"})
    assert len(found) == 1 and "columns not in the header: ['Makerspace']" in (
        found[0].error or "")
    assert main(["import", "x.csv", "--map", "Lab=nom", "--api-key", "k"]) == 2


@pytest.mark.asyncio(loop_scope="session")
async def test_importing_every_source_through_the_registry(
        registry: InProcess, org: tuple[str, str]) -> None:
    expected = sum(len(list(records(str(p), p.read_bytes(), IMA_MAP)))
                   for p in SOURCES.iterdir() if p.suffix != ".md")
    summary = await import_paths([SOURCES], registry_url=registry.url, api_key=org[1],
                                 progress=False, mapping=IMA_MAP)
    assert summary.counts["rejected"] == 0, summary.rejected[:5]
    # the two single OKW documents are also in okw_facilities_upload.yaml: same ids
    assert summary.counts["created"] == expected - 2
    assert sum(summary.counts[k] for k in ("created", "updated", "unchanged")) == expected
