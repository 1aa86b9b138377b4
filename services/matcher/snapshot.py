"""The checkpoint's snapshot form: every profile, with what profiles share written once.
Pure.

Why tables: 100,000s of profiles share terms, needs, process and material sets, machines
and machine lists. Written inline, a 200,000-entity snapshot was 27 MB compressed and its
decoding (JSON, then one shared() lookup per term, need and machine) was most of a
restart; as references into tables of distinct values, each is decoded once, and the
objects are shared as shared() would share them."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

import orjson

from services.matcher.profiles import (
    DesignProfile,
    FacilityProfile,
    Machine,
    Need,
    PartNeed,
    load_profile,
    need,
)

Profile = DesignProfile | FacilityProfile
Entity = tuple[str, str, int, Profile | None]  # kind, id, version, profile (None: deleted)
FORMAT = 2
H = TypeVar("H", bound=Hashable)


class _Table:
    """Distinct values in first-seen order, each written once and referred to by number."""

    def __init__(self) -> None:
        self.refs: dict[Any, int] = {}
        self.rows: list[Any] = []

    def ref(self, value: H, row_of: Callable[[H], Any] = lambda v: v) -> int:
        at = self.refs.get(value)
        if at is None:
            at = self.refs[value] = len(self.rows)
            self.rows.append(row_of(value))
        return at


def encode(entities: Iterable[Entity]) -> bytes:
    words, atoms, terms, needs, machines, kits = (_Table() for _ in range(6))

    def term_ref(values: tuple[str, ...] | frozenset[str]) -> int:
        key = tuple(sorted(values)) if isinstance(values, frozenset) else values
        return terms.ref(key, lambda ws: [words.ref(w) for w in ws])

    def needs_ref(values: tuple[Need, ...]) -> int:
        return needs.ref(values, lambda ns: [
            atoms.ref(n, lambda a: [a.id, a.known, a.inferred]) for n in ns])

    def machine_row(m: Machine) -> list[Any]:
        return [m.label, term_ref(m.processes), term_ref(m.materials),
                list(m.size) if m.size else None]

    def kit_ref(values: tuple[Machine, ...]) -> int:
        return kits.ref(values, lambda ms: [machines.ref(m, machine_row) for m in ms])

    rows: list[Any] = []
    for kind, entity_id, version, p in entities:
        if p is None:
            rows.append(["x", kind, entity_id, version])
        elif isinstance(p, DesignProfile):
            rows.append(["d", p.id, p.version, needs_ref(p.processes), needs_ref(p.materials),
                         [[words.ref(x.name), term_ref(x.processes), list(x.size)]
                          for x in p.parts]])
        else:
            rows.append(["f", p.id, p.version, p.status, p.lat, p.lon, term_ref(p.processes),
                         term_ref(p.materials), kit_ref(p.machines)])
    return zlib.compress(orjson.dumps({
        "format": FORMAT, "words": words.rows, "atoms": atoms.rows, "terms": terms.rows,
        "needs": needs.rows, "machines": machines.rows, "kits": kits.rows,
        "entities": rows}), 1)


def decode(blob: bytes) -> list[Entity]:
    """Each table row becomes one object, shared by every profile referring to it."""
    data = orjson.loads(zlib.decompress(blob))
    if isinstance(data, list):  # format 1: each profile written whole
        return [(kind, entity_id, version, profile and load_profile(profile))
                for kind, entity_id, version, profile in data]
    words = [sys.intern(w) for w in data["words"]]
    atoms = [need(i, k, f) for i, k, f in data["atoms"]]
    terms = [tuple([words[w] for w in row]) for row in data["terms"]]
    term_sets = [frozenset(t) for t in terms]
    needs = [tuple([atoms[a] for a in row]) for row in data["needs"]]
    machines = [Machine(label, terms[p], terms[m], tuple(s) if s else None)
                for label, p, m, s in data["machines"]]
    kits = [tuple([machines[m] for m in row]) for row in data["kits"]]
    out: list[Entity] = []
    for row in data["entities"]:
        tag = row[0]
        if tag == "d":
            _, id_, version, processes, materials, parts = row
            out.append(("design", id_, version, DesignProfile(
                id_, version, needs[processes], needs[materials],
                tuple([PartNeed(words[n], terms[p], tuple(s)) for n, p, s in parts]))))
        elif tag == "f":
            _, id_, version, status, lat, lon, processes, materials, kit = row
            out.append(("facility", id_, version, FacilityProfile(
                id_, version, sys.intern(status), lat, lon, term_sets[processes],
                term_sets[materials], kits[kit])))
        else:
            _, kind, id_, version = row
            out.append((kind, id_, version, None))
    return out
