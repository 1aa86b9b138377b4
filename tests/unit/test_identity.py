"""The ids entities get from their documents when none is given. Stored entities carry
them, so they are pinned here from real files: a change to how ids are derived would
make every re-import add a copy instead of updating what is stored."""

from __future__ import annotations

from pathlib import Path

from ingest.identity import document_id
from ingest.layouts import records
from ingest.okh import read_design
from ingest.okw import read_facility
from ingest.record import Record
from tests.support.paths import SHARED_DATA

SHARED = SHARED_DATA


def first_record(path: Path) -> Record:
    """The first entity the file holds (rows that name none are left out)."""
    return next(r for r in records(str(path), path.read_bytes()) if r.document is not None)


def test_designs_keep_the_ids_their_manifests_were_stored_under() -> None:
    for name, expected in (("planktoscope.okh.toml", "planktoscope-543acc89"),
                           ("ohloom.okh.toml", "ohloom-ee5623cd"),
                           ("switch-mounting-plate-gopro.okh.yml",
                            "switch-plate-gopro-compatible-cb87fc3f")):
        record = first_record(SHARED / "okh" / name)
        assert record.document is not None and record.entity_id is None
        assert document_id("design", record.document) == expected
        assert read_design(record.document).id == expected


def test_import_formats_keep_their_ids() -> None:
    labs = first_record(SHARED / "okw" / "fablabs_with_capabilities.csv")
    assert labs.entity_id == "fablabs-269"
    # the same lab sent alone, with no id, as POST /v1/facilities reads it
    assert labs.document is not None
    assert document_id("facility", labs.document) == "fablab-hamamatsu-a1ee9cad"
    assert read_facility(labs.document).id == "fablab-hamamatsu-a1ee9cad"
    assert first_record(SHARED / "okw" / "makerspace_machines_with_travel.csv"
                        ).entity_id == "dti-makerspace-2ca33cd7"
    field_ready = first_record(SHARED / "designs" / "field_ready_designs.json")
    assert field_ready.entity_id == "fr-WA014_11mm"
    assert field_ready.document is not None
    assert document_id("design", field_ready.document) == "bsp-thread-11mm-aea14c6e"


def test_a_facility_spelled_in_other_keys_gets_the_same_id() -> None:
    place = {"address": {"city": "Hamamatsu"}, "gps_coordinates": "34.7, 137.7"}
    snake = document_id("facility", {"name": "Fab Lab", "location": place})
    assert document_id("facility", {"Name": "Fab Lab", "Location": place}) == snake
    assert read_facility({"Name": "Fab Lab", "Location": place}).id == snake


def test_an_id_given_in_the_document_is_kept() -> None:
    assert document_id("design", {"id": "mine", "title": "T"}) == "mine"
    assert document_id("facility", {"ID": "lab-7", "name": "L"}) == "lab-7"
