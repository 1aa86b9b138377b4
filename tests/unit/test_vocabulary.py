"""The vocabulary resolves the names real data uses and knows what is a kind of what."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import vocabulary
from contracts.errors import InvalidInput
from contracts.units import parse_length

PROCESS_NAMES = [
    ("3d-printing", "3d-printing"), ("3D Printing", "3d-printing"),
    ("additive manufacturing/FDM", "fdm"), ("Q229367", "3d-printing"),
    ("https://en.wikipedia.org/wiki/3D_printing", "3d-printing"),
    ("https://www.wikidata.org/wiki/Q3062349", "laser-cutting"),
    ("FDM (Fused Deposition Modeling)", "fdm"), ("three_d_printing", "3d-printing"),
    ("3DP", "3d-printing"), ("LAS", "laser-cutting"), ("PCB", "pcb-fabrication"),
    ("circuit_production", "pcb-fabrication"), ("precision_milling", "precision-milling"),
    ("Laserschneiden", "laser-cutting"), ("Soudage", "welding"), ("WJ", "waterjet-cutting"),
]


@pytest.mark.parametrize(("name", "expected"), PROCESS_NAMES)
def test_process_names_resolve_to_canonical_ids(name: str, expected: str) -> None:
    entry = vocabulary.processes().resolve(name)
    assert entry is not None and entry.id == expected


def test_vocabulary_is_large_enough_and_its_hierarchy_is_sound() -> None:
    processes, materials = vocabulary.processes(), vocabulary.materials()
    assert len(processes.entries) >= 25 and len(materials.entries) >= 40
    for vocab in (processes, materials):
        for entry in vocab.entries.values():
            assert all(p in vocab.entries for p in entry.parents), entry.id
            assert entry.id not in vocab.ancestors(entry.id), f"cycle at {entry.id}"


def test_hierarchy_answers_kind_of_questions() -> None:
    processes, materials = vocabulary.processes(), vocabulary.materials()
    assert processes.is_kind_of("fdm", "3d-printing")
    assert not processes.is_kind_of("3d-printing", "fdm")
    assert processes.with_descendants("3d-printing") == {"3d-printing", "fdm", "sla", "sls"}
    assert {"cnc-milling", "cnc-machining", "machining"} <= processes.ancestors(
        "precision-milling")
    assert materials.is_kind_of("pla", "thermoplastic")
    assert materials.is_kind_of("stainless-steel", "metal")


def test_materials_resolve_through_qualifiers() -> None:
    materials = vocabulary.materials()
    for name, expected in [("ABS filament", "abs"), ("ABS Plastic", "abs"),
                           ("PET bottles", "pet"), ("Aluminum", "aluminium"),
                           ("Plexiglas", "acrylic"), ("Sperrholz", "plywood")]:
        entry = materials.resolve(name)
        assert entry is not None and entry.id == expected, name
    assert materials.resolve("unobtainium") is None


@pytest.mark.parametrize(("text", "mm"), [("220mm", 220), ("8.5 in", 215.9), ("12\"", 304.8),
                                          ("30", 30), ("2 cm", 20), ("1.2 m", 1200),
                                          ("9,5 mm", 9.5)])
def test_lengths_convert_to_millimetres(text: str, mm: float) -> None:
    assert parse_length(text, field="f") == pytest.approx(mm)


@pytest.mark.parametrize("text", ["12 parsecs", "-5mm", "abc", "1e400"])
def test_bad_lengths_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_length(text, field="f")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.sampled_from(["3D printing", "https://", "Q", "////", " "]))
def test_any_name_resolves_to_a_known_entry_or_to_nothing(name: str) -> None:
    for kind in ("process", "material"):
        vocab = vocabulary.vocabulary(kind)
        entry = vocab.resolve(name)
        assert entry is None or vocab.ancestors(entry.id) is not None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.from_regex(r"-?[0-9]{0,400}(\.[0-9]*)?(e[0-9]{1,4})? ?[a-z\"]*"))
def test_any_length_text_is_millimetres_in_range_or_our_error(text: str) -> None:
    try:
        mm = parse_length(text, field="f")
    except InvalidInput as exc:
        assert exc.field == "f"
    else:
        assert 0 < mm <= 1_000_000
