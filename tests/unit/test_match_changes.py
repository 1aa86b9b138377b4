"""The match-change contract as pure functions: one message per change, split under the
server's largest message, every pair rebuilt with the explanation the rules give, and
everything that grows with its input bounded. Real fab labs from ../shared/data."""

from __future__ import annotations

import random
import zlib
from functools import cache

import orjson
import pytest

from contracts import matches
from contracts.matches import (
    Cause,
    ChangedFacility,
    MatchChange,
    MatchEvent,
    Pair,
    PairOut,
    Requirement,
    encode_change,
)
from contracts.models import Box, Design, Equipment, Part
from ingest.okh import read_design
from ingest.okw import read_facility
from makelocal.importer import read_all
from services.matcher.checkpoint import Change
from services.matcher.diff import apply_design, apply_facility
from services.matcher.index import CapabilityIndex
from services.matcher.outgoing import change_pieces
from services.matcher.profiles import FacilityProfile, design_profile, facility_profile
from services.matcher.rules import evaluate
from tests.support.builders import design_model, facility_model, term
from tests.support.helpers import DATA

MAX_PAYLOAD = 1024 * 1024  # NATS's default


@cache
def real_facilities() -> tuple[FacilityProfile, ...]:
    out = []
    for record, body, _ in read_all([DATA]):
        if record.kind == "facility" and body is not None:
            facility = read_facility(record.document, facility_id=record.entity_id)
            out.append(facility_profile(facility, 1))
    return tuple(out)


def index_of(facilities: list[FacilityProfile] | tuple[FacilityProfile, ...]) -> CapabilityIndex:
    index = CapabilityIndex()
    index.load([], list(facilities))
    return index


def design_change(index: CapabilityIndex, design: Design, version: int = 1,
                  max_bytes: int = MAX_PAYLOAD) -> list[matches.Piece]:
    profile = design_profile(design, version)
    diff = apply_design(index, design.id, profile, version)
    change = Change(1, "design", design.id, version, None, profile, "e-1",
                    "2026-11-30T12:00:00+00:00")
    return change_pieces(diff, change, index, max_bytes)


def decoded(pieces: list[matches.Piece]) -> list[dict]:
    return [matches.decode(p.payload, p.headers) for p in pieces]


PRINTED_PLA = {"okhv": "OKH-LOSHv1.0", "name": "Clip", "tsdc": ["3DP"], "material": "PLA"}


def test_a_printed_part_is_one_small_message_for_its_thousand_real_fab_labs() -> None:
    index = index_of(real_facilities())
    design = read_design(PRINTED_PLA, design_id="clip")
    pieces = design_change(index, design)
    assert len(pieces) == 1 and pieces[0].subject == "matches.design.clip"
    [change] = decoded(pieces)
    MatchChange.model_validate(change)
    pairs = change["found"]
    assert len(pairs) > 1000 and not change["withdrawn"]
    # what the pairs share is written once: a handful of distinct reasons for them all
    assert len(change["reasons"]) < 10
    assert len(pieces[0].payload) / len(pairs) <= 40  # bytes per pair, as stored
    # every pair rebuilds to the event the rules give for it
    profile = index.designs["clip"]
    for event in matches.match_events(change):
        MatchEvent.model_validate(event)
        facility = index.facilities[event["facility_id"]]
        evaluation = evaluate(profile, facility)
        assert event["score"] == evaluation.score
        assert [tuple(r.values()) for r in event["explanation"]] == [
            tuple(r) for r in evaluation.requirements]
        assert (event["facility_lat"], event["facility_lon"]) == (facility.lat, facility.lon)
        assert event["event_id"] == matches.match_event_id(
            "found", "clip", 1, facility.id, facility.version)


def test_a_facility_change_lists_its_designs_with_their_processes() -> None:
    designs = [design_profile(design_model([p], id_=f"d{i}"), 1)
               for i, p in enumerate(["fdm", "laser-cutting", "fdm", "3d-printing"])]
    index = CapabilityIndex()
    index.load(designs, [])
    lab = facility_profile(facility_model(["fdm"], id_="lab", lat=52.5, lon=13.4), 3)
    diff = apply_facility(index, "lab", lab, 3)
    pieces = change_pieces(diff, Change(7, "facility", "lab", 3, None, lab, None, None), index,
                           MAX_PAYLOAD)
    [change] = decoded(pieces)
    assert pieces[0].subject == "matches.facility.lab"
    assert change["facility"] == {"id": "lab", "version": 3, "lat": 52.5, "lon": 13.4}
    assert [p["id"] for p in change["found"]] == ["d0", "d2", "d3"]
    events = list(matches.match_events(change))
    assert [e["design_processes"] for e in events] == [["fdm"], ["fdm"], ["3d-printing"]]
    assert len(change["process_sets"]) == 2  # fdm written once for d0 and d2
    assert {(e["facility_lat"], e["facility_lon"]) for e in events} == {(52.5, 13.4)}
    # closing it withdraws the same three, score 0, in one message
    closed = facility_profile(facility_model(["fdm"], status="closed", id_="lab"), 4)
    diff = apply_facility(index, "lab", closed, 4)
    [change] = decoded(change_pieces(diff, Change(8, "facility", "lab", 4, lab, closed, None,
                                                  None), index, MAX_PAYLOAD))
    assert [p["id"] for p in change["withdrawn"]] == ["d0", "d2", "d3"]
    assert {p["s"] for p in change["withdrawn"]} == {0.0}


def pairs_of(pieces: list[matches.Piece]) -> list[tuple[str, str, str]]:
    return [(e["type"], e["design_id"], e["facility_id"])
            for c in decoded(pieces) for e in matches.match_events(c)]


def test_a_wide_change_is_split_under_max_payload_and_cut_the_same_way_on_replay() -> None:
    cause = Cause(entity="facility", entity_id="lab", version=2, event_id="e")
    changed = ChangedFacility(id="lab", version=2, lat=1.0, lon=2.0)
    pairs = [PairOut("found" if i % 3 else "withdrawn", f"design-{i:05d}", 1, 0.75,
                     [("status", "active", "met", None, None),
                      ("process", "fdm", "met", "fdm", f"note {i % 50}")],
                     processes=("fdm", f"p{i % 20}")) for i in range(20_000)]
    limit = 64 * 1024
    pieces = encode_change(cause, changed, pairs, limit)
    assert len(pieces) > 3
    assert all(len(p.payload) <= limit for p in pieces)
    assert all(len(zlib.decompress(p.payload)) <= limit for p in pieces)
    changes = decoded(pieces)
    assert [c["piece"] for c in changes] == list(range(len(pieces)))
    assert {c["pieces"] for c in changes} == {len(pieces)}
    assert len({p.message_id for p in pieces}) == len(pieces)
    got = pairs_of(pieces)
    assert len(got) == len(set(got)) == 20_000  # each pair once, in one piece only
    # a replay meets the pairs in another order (slots differ after a restart)
    shuffled = pairs[:]
    random.Random(3).shuffle(shuffled)
    again = encode_change(cause, changed, shuffled, limit)
    assert [(p.message_id, p.payload) for p in again] == [
        (p.message_id, p.payload) for p in pieces]


def test_a_design_of_5000_sized_parts_stays_under_max_payload_with_a_bounded_explanation(
        ) -> None:
    parts = [Part(name=f"part {i} ".ljust(1000, "x"), processes=[term("fdm")],
                  outer_dimensions=Box(x_mm=10 + i % 200, y_mm=20, z_mm=5))
             for i in range(5000)]
    design = design_model(["fdm"], parts=parts, id_="huge")
    # a machine label of 2,001 characters (make and model)
    printer = Equipment(equipment_type="printer", make="M" * 1000, model="N" * 1000,
                        processes=[term("fdm")],
                        working_volume=Box(x_mm=250, y_mm=250, z_mm=250))
    labs = [facility_profile(facility_model(["fdm"], equipment=[printer] * (1 + i % 3),
                                            id_=f"lab-{i}"), 1)
            for i in range(300)]
    index = index_of(labs)
    pieces = design_change(index, design)
    assert all(len(p.payload) <= MAX_PAYLOAD for p in pieces)
    events = [e for c in decoded(pieces) for e in matches.match_events(c)]
    assert len(events) == 300
    for event in events:
        explanation = event["explanation"]
        assert len(explanation) <= matches.MAX_REASONS
        assert len(orjson.dumps(explanation)) <= matches.MAX_EXPLANATION_BYTES
        assert all(len(r["need"]) <= matches.MAX_TEXT and len(r["by"] or "") <= matches.MAX_TEXT
                   for r in explanation)
        # the parts left out are counted, the worst outcome of them kept
        assert explanation[-1]["kind"] == "more"
        assert explanation[-1]["need"] == f"{5002 - len(explanation) + 1} more requirements"
        assert explanation[-1]["outcome"] == "met"


def test_a_facility_of_500_machines_and_long_labels_against_many_designs() -> None:
    machines = [Equipment(equipment_type="x", make=f"make {i} ".ljust(1000, "m"),
                          processes=[term("fdm")],
                          working_volume=Box(x_mm=100 + i, y_mm=100, z_mm=100))
                for i in range(500)]
    designs = [design_profile(design_model(
        ["fdm"], parts=[Part(name="p" * 1000, processes=[term("fdm")],
                             outer_dimensions=Box(x_mm=50 + i % 500, y_mm=60, z_mm=70))],
        id_=f"d{i}"), 1) for i in range(3000)]
    index = CapabilityIndex()
    index.load(designs, [])
    lab = facility_profile(facility_model(["fdm"], equipment=machines, id_="lab"), 1)
    diff = apply_facility(index, "lab", lab, 1)
    limit = 128 * 1024
    pieces = change_pieces(diff, Change(1, "facility", "lab", 1, None, lab, None, None),
                           index, limit)
    assert len(pieces) > 1 and all(len(p.payload) <= limit for p in pieces)
    assert len(pairs_of(pieces)) == 3000


def test_a_message_that_is_not_ours_is_refused_with_a_reason() -> None:
    for data, headers in ((b"not zlib", {"Content-Encoding": "deflate"}),
                          (b"{nope", None),
                          (b'{"schema_version": 1, "event_id": "x"}', None),
                          (b"[1, 2]", None)):
        with pytest.raises(ValueError):
            matches.decode(data, headers)
    change = {"schema_version": 2, "design": {"id": "d", "version": 1, "processes": []},
              "found": [{"id": "f"}], "reasons": []}
    with pytest.raises((LookupError, TypeError)):
        matches.pairs(change)


def test_bound_reasons_keeps_what_tells_most() -> None:
    reasons = [("status", "active", "met", None, None)] + [
        ("size", f"part {i}", "unmet" if i == 4000 else "met", None, None) for i in range(5000)]
    bounded = matches.bound_reasons(reasons)
    assert len(bounded) == matches.MAX_REASONS
    # the unmet one is kept, the rest in their order, the status first
    assert ("size", "part 4000", "unmet", None, None) in bounded
    assert bounded[0][0] == "status" and bounded[1][1] == "part 0"
    assert bounded[-1][:3] == ("more", f"{5001 - matches.MAX_REASONS + 1} more requirements",
                               "met")
    assert matches.bound_reasons(reasons[:10]) == tuple(reasons[:10])
    # bounded in bytes too: 200 four-byte characters a field
    wide = [("size", "\U0001F600" * 1000, "met", "\U0001F600" * 1000, None)] * 60
    assert len(orjson.dumps([list(r) for r in matches.bound_reasons(wide)])) <= (
        matches.MAX_EXPLANATION_BYTES)


def written_as_the_models_say(change: dict) -> int:
    """The change validates as MatchChange, each pair's event as MatchEvent, and the rows
    and events the fast paths write by hand hold every field of their model (one they
    forgot would still validate, as its default); returns the number of pairs."""
    MatchChange.model_validate(change)
    entity = change["cause"]["entity"]
    assert set(change["cause"]) == set(Cause.model_fields)
    assert set(change) == set(MatchChange.model_fields) - {
        "facility" if entity == "design" else "design"}
    assert all(set(r) == set(Requirement.model_fields) for r in change["reasons"])
    counterpart = {"p"} if entity == "design" else {"lat", "lon"}  # what the row leaves out
    rows = [*change["found"], *change["withdrawn"]]
    assert all(set(row) == set(Pair.model_fields) - counterpart for row in rows)
    events = list(matches.match_events(change))
    for event in events:
        MatchEvent.model_validate(event)
        assert set(event) == set(MatchEvent.model_fields)
    return len(events)


def test_real_manifests_and_fab_labs_are_written_as_the_models_say() -> None:
    index = index_of(real_facilities())
    designs = []
    for path in sorted((DATA / "okh").iterdir()):
        for record, body, _ in read_all([path]):
            if body is not None:
                designs.append(read_design(record.document, design_id=record.entity_id or "x"))
    pairs = sum(written_as_the_models_say(change)
                for design in designs for change in decoded(design_change(index, design)))
    assert pairs > 1000
    # the other way round: a lab's change lists the designs it can make, then withdraws them
    for n, lab in enumerate(real_facilities()[:100]):
        closed = facility_profile(facility_model([], status="closed", id_=lab.id), 2)
        for version, profile, old in ((2, closed, lab), (3, lab, closed)):
            diff = apply_facility(index, lab.id, profile, version)
            change = Change(n, "facility", lab.id, version, old, profile, f"e-{n}",
                            "2026-11-30T12:00:00Z")
            for piece in decoded(change_pieces(diff, change, index, MAX_PAYLOAD)):
                pairs += written_as_the_models_say(piece)
    assert pairs > 2000


def test_settings_refuse_a_piece_size_under_4_kb() -> None:
    from pydantic import ValidationError

    from services.matcher.settings import MatcherSettings

    with pytest.raises(ValidationError, match="matcher_piece_bytes"):
        MatcherSettings(matcher_piece_bytes=1000)




def test_each_partition_publishes_its_own_pieces_of_a_facility_change() -> None:
    cause = Cause(entity="facility", entity_id="lab", version=2)
    changed = ChangedFacility(id="lab", version=2)

    def pieces(partition: int, design: str) -> list[matches.Piece]:
        pair = PairOut("found", design, 1, 1.0, [("status", "active", "met", None, None)],
                       processes=("fdm",))
        return encode_change(cause, changed, [pair], MAX_PAYLOAD, partition)

    zero, one = pieces(0, "d-a"), pieces(1, "d-b")
    # JetStream would drop one of them as a duplicate if they shared an id
    assert zero[0].message_id != one[0].message_id
    assert decoded(one)[0]["partition"] == 1
    assert pieces(1, "d-b")[0].message_id == one[0].message_id
