"""Inferring what making a design takes from its files and words: each rule of precision
the issue names, and the evidence every guess must carry. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.okh import read_design
from ingest.validation import matchable, report
from tests.support.builders import inferred, manifest

PCB = {"pcb-fabrication", "electronics-assembly"}


@pytest.mark.parametrize(("fields", "expected"), [
    ({"design-files": ["parts/housing.stl"]}, {"3d-printing"}),
    ({"design-files": [{"path": "hardware/board.kicad_pcb", "title": "main board"}]},
     PCB),
    ({"manufacturing-files": ["gerbers/board-F_Cu.gtl"]}, PCB),
    ({"manufacturing-files": ["panels/side.dxf"]}, {"cutting"}),
    ({"manufacturing-files": ["panels/Box_Laser_Cut.DXF"]}, {"laser-cutting"}),
    ({"design-files": [{"path": "mount.zip", "title": "3D printed LED mount"}]},
     {"3d-printing"}),
    ({"manufacturing-files": ["PCB/"]}, PCB),
    ({"manufacturing-files": ["cnc/toolpath.nc"]}, {"cnc-milling"}),
    ({"design-files": ["firmware/main.ino", "src/app.cpp"]}, set()),
    ({"description": "The enclosure is laser-cut plywood."}, {"laser-cutting"}),
    ({"description": "Parts are CNC milled aluminium."}, {"cnc-milling"}),
    ({"description": "A bag sewn from old jeans."}, {"sewing"}),
    ({"keywords": ["3d-printable", "assistive"]}, {"3d-printing"}),
    ({"tool-list": ["A 3D printer with a bed at least 170 mm wide"]}, {"3d-printing"}),
    ({"tool-list": ["Soldering iron"]}, {"electronics-assembly"}),
    ({"description": "Die Teile werden im 3D-Druck hergestellt."}, {"3d-printing"}),
    ({"description": "Les pièces sont découpées au laser."}, {"laser-cutting"}),
    ({"description": "Boîtier découpé au laser dans du contreplaqué."}, {"laser-cutting"}),
    ({"intended-use": "Piezas impresas en 3D para sillas de ruedas."}, {"3d-printing"}),
])
def test_files_and_words_give_processes(fields: dict[str, Any], expected: set[str]) -> None:
    assert inferred(manifest(**fields)) == expected


def test_a_design_of_a_machine_does_not_need_the_machine() -> None:
    mill = manifest(title="Open CNC Mill",
                    description="An open source CNC mill for aluminium. It can do CNC milling"
                                " of parts up to 300 mm.",
                    keywords=["cnc", "cnc mill"])
    assert "cnc-milling" not in inferred(mill)
    printer = manifest("losh", name="Tiny 3D printer",
                       function="A 3D printer you can build; printed parts are 3D printed in"
                                " PETG.")
    assert inferred(printer) == {"3d-printing"}  # from "3D printed", not "3D printer"
    evidence = next(t for t in printer.processes if t.id == "3d-printing").evidence
    assert evidence is not None and "printed" in evidence


def test_printed_circuit_is_a_pcb_not_3d_printing() -> None:
    assert inferred(manifest(description="Mounts on a printed circuit board.")) == {
        "pcb-fabrication", "electronics-assembly"}


def test_what_the_product_does_is_not_a_need() -> None:
    design = manifest(title="Multi-tool head",
                      description="This head allows laser cutting, and it can do engraving too.")
    assert inferred(design) == set()


def test_a_machine_named_in_prose_needs_a_word_of_use() -> None:
    assert inferred(manifest(description="Inspired by the laser cutter at our lab.")) == set()
    assert inferred(manifest(description="Cut the panels on a laser cutter.")) == {"laser-cutting"}


def test_an_image_names_no_file_type() -> None:
    assert inferred(manifest(image="docs/front.svg")) == set()
    assert inferred(manifest(image="images/3d-printed-case.jpg")) == {"3d-printing"}


def test_a_link_host_is_not_evidence() -> None:
    assert inferred(manifest(**{"design-files": ["https://cnc-kitchen.example/model"]})) == set()


def test_every_guess_carries_field_evidence_and_confidence() -> None:
    design = manifest(description="Laser-cut acrylic case.",
                      **{"design-files": ["case_lasercut.dxf", "knob.stl"]})
    for term in design.processes:
        assert term.inferred and term.source and term.evidence
        assert term.confidence is not None and 0 < term.confidence <= 1
    laser = next(t for t in design.processes if t.id == "laser-cutting")
    assert laser.confidence is not None and laser.confidence > 0.65  # two pieces of evidence
    assert {t.id for t in design.materials} == {"acrylic"}
    assert all(t.inferred and t.evidence for t in design.materials)


def test_materials_after_a_way_of_making() -> None:
    design = manifest(description="Printed in PETG. The frame is CNC milled from aluminium.")
    assert {t.id for t in design.materials} >= {"aluminium"}
    stated = manifest(description="Laser-cut plywood.", materials=["MDF"])
    assert [(t.id, t.inferred) for t in stated.materials] == [("mdf", False)]


def test_a_size_in_words_becomes_a_size_need() -> None:
    design = manifest(**{"tool-list": ["A 3D printer with a bed at least 170 mm wide"]})
    [part] = design.parts
    assert part.outer_dimensions is not None and part.outer_dimensions.x_mm == 170
    assert [t.id for t in part.processes] == ["3d-printing"]
    assert part.evidence and "170 mm" in part.evidence
    volume = manifest(description="Needs a 3D printer with a build volume of 200 x 200 x 150 mm.")
    [part] = volume.parts
    assert part.outer_dimensions is not None
    assert (part.outer_dimensions.x_mm, part.outer_dimensions.y_mm,
            part.outer_dimensions.z_mm) == (200, 200, 150)


def test_a_size_without_its_machine_is_not_a_need() -> None:
    assert manifest(description="The bed is 170 mm wide.").parts == []


def test_stated_processes_are_not_second_guessed() -> None:
    design = manifest(**{"manufacturing-processes": ["Laser cutting"],
                         "design-files": ["x.stl"]})
    assert [(t.id, t.inferred) for t in design.processes] == [("laser-cutting", False)]


def test_a_stated_process_nobody_knows_still_lets_files_speak() -> None:
    design = manifest(**{"manufacturing-processes": ["Heat gun"], "design-files": ["lid.stl"]})
    assert {(t.id, t.known, t.inferred) for t in design.processes} == {
        ("heat gun", False, False), ("3d-printing", True, True)}


@pytest.mark.parametrize(("build", "advice"), [
    (lambda: manifest(description="A nice thing."), "manufacturing-processes"),
    (lambda: manifest("losh", function="A nice thing."), "tsdc"),
])
def test_a_design_nothing_can_match_says_what_to_add(build: Any, advice: str) -> None:
    design = build()
    assert not matchable(design)
    [warning] = [w for w in design.warnings if "no process" in w]
    assert f"`{advice}`" in warning
    assert report(design)["matchable"] is False


def test_the_report_lists_the_inferred_with_evidence() -> None:
    result = report(manifest(**{"design-files": ["a.stl"]}))
    assert result["matchable"] is True
    assert result["inferred"] == [{"kind": "process", "id": "3d-printing",
                                   "label": "3D printing", "field": "design-files",
                                   "evidence": "a.stl", "confidence": 0.8}]
    assert any("inferred, not stated" in w for w in result["warnings"])


def test_a_losh_part_infers_from_its_own_files() -> None:
    design = manifest("losh", part=[{"name": "Lid", "source": ["lid.stl"]},
                                    {"name": "Main PCB", "source": ["pcb/main.kicad_pcb"]}])
    by_part = {p.name: {t.id for t in p.processes} for p in design.parts}
    assert by_part == {"Lid": {"3d-printing"},
                       "Main PCB": {"pcb-fabrication", "electronics-assembly"}}
    assert {t.id for t in design.processes} == {
        "3d-printing", "pcb-fabrication", "electronics-assembly"}


def test_a_stated_pcb_brings_its_assembly_marked_as_inferred() -> None:
    design = manifest("losh", tsdc=["PCB"])
    by_id = {t.id: t for t in design.processes}
    assert not by_id["pcb-fabrication"].inferred
    implied = by_id["electronics-assembly"]
    assert implied.inferred and implied.evidence == "implied by PCB fabrication"
    assert implied.source == "tsdc" and implied.confidence == 0.45


def test_manifests_as_people_write_them() -> None:
    from ingest.documents import parse_document

    directive = parse_document(b"%Open know-how manifest 0.1\n---\ntitle: Bench\n", "yaml")
    assert read_design(directive).name == "Bench"
    spaced = read_design({"okh:manifest-version": "1.0", "name": "Rio",
                          "okh:project-version": "2"})
    assert spaced.okh_format == "OKH v1 (1.0)" and spaced.name == "Rio"
    assert any("`name` is read as the title" in w for w in spaced.warnings)
