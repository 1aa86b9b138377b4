"""The readers on real manifests and records, and on anything hypothesis can make."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.errors import InvalidInput
from ingest.documents import parse_document
from ingest.layouts import records
from ingest.okh import read_design
from ingest.okw import read_facility
from tests.support.hostile import HOSTILE
from tests.support.paths import ROOT


def test_planktoscope_parts_have_sizes_from_openscad_strings(data_dir: Path) -> None:
    doc = parse_document((data_dir / "okh" / "planktoscope.okh.toml").read_bytes(), "toml")
    design = read_design(doc)
    case = design.parts[0]
    assert case.name == "PlanktoScope-Case"
    assert (case.outer_dimensions.x_mm, case.outer_dimensions.y_mm,
            case.outer_dimensions.z_mm) == (275, 125, 105)
    assert [t.id for t in case.processes] == ["cnc-machining"]
    assert {(t.id, t.inferred) for t in design.processes} == {
        ("cnc-machining", False), ("pcb-fabrication", False), ("standard-parts", False),
        ("electronics-assembly", True)}  # a PCB made is a PCB populated


def test_ohloom_keeps_non_standard_keys_and_reads_part_outer_dimensions(data_dir: Path) -> None:
    design = read_design(parse_document((data_dir / "okh" / "ohloom.okh.toml").read_bytes(),
                                        "toml"))
    assert design.extra == {"fabric-width-mm": 400}
    assert design.outer_dimensions is not None and design.outer_dimensions.x_mm == 400
    assert len(design.parts) == 18
    # a malformed OpenSCAD string ("cube(size = [120,100,5]" without ")") still reads
    comb = next(p for p in design.parts if p.name == "CombModul")
    assert comb.outer_dimensions is not None and comb.outer_dimensions.z_mm == 5


def test_okw_human_and_camel_case_names_are_accepted() -> None:
    doc = {"Name": "Lab", "facilityStatus": "Temporary Closure",
           "Manufacturing processes": ["https://en.wikipedia.org/wiki/Laser_cutting"],
           "location": {"coordinates": {"latitude": 5.6, "longitude": -0.16}},
           "equipment": [{"equipmentType": "3D printer", "x_travel": "9.8in", "y_travel": 200,
                          "z_travel": "20 cm"}]}
    facility = read_facility(doc)
    assert facility.status == "temporary-closure"
    assert {t.id for t in facility.processes} == {"laser-cutting", "3d-printing"}
    box = facility.equipment[0].working_volume
    assert (box.x_mm, box.y_mm, box.z_mm) == (248.92, 200, 200)
    assert facility.location.lat == 5.6


def test_unknown_terms_are_kept_with_a_warning() -> None:
    facility = read_facility({"name": "Lab", "manufacturing_processes": ["glassblowing"]})
    assert [(t.id, t.known) for t in facility.processes] == [("glassblowing", False)]
    assert "glassblowing" in facility.warnings[0]


def test_every_shared_record_is_read_or_rejected_with_a_reason(data_dir: Path) -> None:
    read, rejected = 0, []
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file() or "catalog" in path.parts or path.suffix == ".md":
            continue
        for record in records(str(path), path.read_bytes()):
            if record.error:
                rejected.append(record.error)
                continue
            reader = read_design if record.kind == "design" else read_facility
            try:
                reader(record.document)  # type: ignore[arg-type]
                read += 1
            except InvalidInput as exc:
                rejected.append(exc.message)
    assert read == 3 + 138 + 1291 + 10
    assert rejected == ["machine row names no facility"] * 8


def test_fablabs_rows_with_broken_encoding_or_no_coordinates_say_so(data_dir: Path) -> None:
    path = data_dir / "okw" / "fablabs_with_capabilities.csv"
    found = list(records(str(path), path.read_bytes()))
    sesi = next(r for r in found if r.document and "SESI - A.E." in r.document["name"])
    assert any("encoding" in w for w in sesi.warnings)
    assert any("no coordinates" in w for w in sesi.warnings)
    assert sesi.entity_id == "fablabs-341"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=20), children, max_size=6),
    max_leaves=40,
)
okh_keys = st.sampled_from(["okhv", "name", "title", "tsdc", "part", "material", "license",
                            "outer-dimension", "outer-dimensions", "outer-dimension-dim",
                            "printing-process", "keywords", "manufacturing-files", "source",
                            "export", "materials", "manufacturing-processes", "licensor"])
okw_keys = st.sampled_from(["name", "location", "facility_status", "equipment",
                            "manufacturing_processes", "typical_materials", "owner", "links",
                            "gps_coordinates", "coordinates", "x_travel", "build_volume",
                            "materials_worked", "manufacturing_process", "quantity"])


def manifests(keys: st.SearchStrategy[str]) -> st.SearchStrategy[dict]:
    values = st.recursive(
        json_values | st.sampled_from(["LOSH", "OKH-LOSHv1.0", "cube([1,2,3])",
                                       "cylinder(h=3, r=2)", "3DP", "220 x 220 mm", "12in",
                                       "48.1, 2.3", "Active"]),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(keys | st.text(max_size=8), children, max_size=5),
        max_leaves=30)
    return st.dictionaries(keys | st.text(max_size=10), values, max_size=8)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests(okh_keys))
def test_design_reader_raises_only_our_error(doc: dict) -> None:
    try:
        read_design(doc)
    except InvalidInput:
        pass


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests(okw_keys))
def test_facility_reader_raises_only_our_error(doc: dict) -> None:
    try:
        read_facility(doc)
    except InvalidInput:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       st.sampled_from(["toml", "yaml", "json"]))
def test_documents_parser_raises_only_our_error_on_any_bytes(raw: bytes, fmt: str) -> None:
    try:
        parse_document(raw, fmt)
    except InvalidInput:
        pass


@settings(max_examples=100, deadline=None)
@given(json_values, st.sampled_from(["toml", "yaml", "json"]))
def test_serialised_structures_parse_or_fail_cleanly(value: object, fmt: str) -> None:
    raw = (yaml.safe_dump(value) if fmt == "yaml" else json.dumps(value)).encode()
    try:
        parse_document(raw, fmt)
    except InvalidInput:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(["x.csv", "x.json", "x.toml", "x.yml"]))
def test_import_sources_never_raise(raw: bytes, name: str) -> None:
    header = b"name,capabilities,activity_status,latitude,longitude\n"
    for body in (raw, header + raw):
        for record in records(name, body):
            assert record.error or record.document is not None


def test_deep_nesting_is_refused_not_crashed() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    try:
        parse_document(deep, "json")
    except InvalidInput as exc:
        assert exc.code in ("syntax", "type")


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_documents_are_refused_with_our_error_in_bounded_time(name: str) -> None:
    """Every format and both readers: either a manifest comes out or our InvalidInput does,
    within a couple of seconds, and nothing that PostgreSQL or UTF-8 cannot hold."""
    for fmt in ("json", "yaml", "toml"):
        for read in (read_design, read_facility):
            started = time.monotonic()
            try:
                read(parse_document(HOSTILE[name], fmt)).model_dump_json()
            except InvalidInput as exc:
                assert exc.code and str(exc)
            assert time.monotonic() - started < 5, (name, fmt)
    for fmt in ("json", "yaml"):
        if "NUL" in name or "surrogate" in name:
            with pytest.raises(InvalidInput) as refused:
                parse_document(HOSTILE[name], fmt)
            assert refused.value.code == "invalid_character"


# Run in a child whose address space may grow by at most this much: a reader that builds
# something huge from a small hostile input dies of MemoryError there, named by the case.
MEMORY_HEADROOM = 64 * 2**20  # the worst case (200,000 nested YAML brackets) peaks at 2 MB
_BOUNDED = """
import resource, sys
from contracts.errors import InvalidInput
from ingest.documents import parse_document
from ingest.okh import read_design
from ingest.okw import read_facility
from tests.support.hostile import HOSTILE
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + {headroom}, size + {headroom}))
for name, raw in HOSTILE.items():
    for fmt in ("json", "yaml", "toml"):
        for read in (read_design, read_facility):
            try:
                read(parse_document(raw, fmt)).model_dump_json()
            except InvalidInput:
                pass
            except MemoryError:
                sys.exit(f"out of memory on {{name}} as {{fmt}}")
print("bounded")
"""


def test_hostile_documents_are_read_within_bounded_memory() -> None:
    done = subprocess.run([sys.executable, "-c", _BOUNDED.format(headroom=MEMORY_HEADROOM)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "bounded", done.stderr[-2000:]


def test_a_part_name_past_the_model_bound_is_a_clear_error_not_a_500() -> None:
    """A reader bound (20,000 characters) above the model's (1,000) let a long part name
    reach pydantic unconverted: a 500 at the API."""
    from contracts.errors import InvalidInput
    from ingest.okh import read_design

    manifest = {"okhv": "OKH-LOSHv1.0", "name": "Long parts",
                "part": [{"name": "ok", "tsdc": "3DP"}, {"name": "p" * 1500, "tsdc": "3DP"}]}
    with pytest.raises(InvalidInput) as caught:
        read_design(manifest)
    assert caught.value.field == "part[1].name"
    assert "1000" in caught.value.message
