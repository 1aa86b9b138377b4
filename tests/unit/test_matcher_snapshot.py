"""The checkpoint's snapshot form: what is decoded is what was encoded, shared values
come back as one object, and a snapshot of the earlier format still loads."""

from __future__ import annotations

import zlib

import orjson

from bench.synthetic import Generator
from contracts.models import Part
from services.matcher.profiles import design_profile, dump_design, dump_facility, facility_profile
from services.matcher.snapshot import decode, encode
from tests.support.builders import design


def entities() -> list[tuple]:
    gen = Generator(seed=3)
    out: list[tuple] = []
    for i in range(300):
        f, d = facility_profile(gen.facility(i), i + 1), design_profile(gen.design(i), 2)
        out += [("facility", f.id, f.version, f), ("design", d.id, d.version, d)]
    # a part needing two processes keeps their order
    two = design(["fdm"], parts=[Part(name="p", processes=[
        {"id": "sla", "label": "sla"}, {"id": "fdm", "label": "fdm"}],
        outer_dimensions={"x_mm": 1, "y_mm": 2})], id_="two", version=4)
    out += [("design", "two", 4, two), ("design", "gone", 7, None), ("facility", "shut", 2, None)]
    return out


def test_a_snapshot_decodes_to_the_profiles_it_was_made_of() -> None:
    before = entities()
    after = decode(encode(before))
    assert after == before
    assert next(e[3] for e in after if e[1] == "two").parts[0].processes == ("sla", "fdm")


def test_equal_values_decode_to_one_shared_object() -> None:
    after = [e[3] for e in decode(encode(entities())) if e[0] == "facility" and e[3]]
    by_value: dict = {}
    for f in after:
        assert by_value.setdefault(f.processes, f.processes) is f.processes
        for machine in f.machines:
            assert by_value.setdefault(machine, machine) is machine


def test_a_snapshot_in_the_first_format_still_loads() -> None:
    before = entities()
    old = zlib.compress(orjson.dumps([
        [kind, entity_id, version, p and (dump_design(p) if kind == "design"
                                          else dump_facility(p))]
        for kind, entity_id, version, p in before]))
    assert decode(old) == before
