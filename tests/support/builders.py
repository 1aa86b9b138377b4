"""One builder per test entity: design and facility documents as the registry reads them,
Design/Facility models and their matcher profiles, subscriptions made through the notifier
API, MATCHES pieces as the matcher cuts them, and designs written straight to the registry
store. Tests vary what their case is about through the parameters and take the rest as
given here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from contracts import matches
from contracts.events import EntityKind
from contracts.models import Design, Equipment, Facility, Location, Part, Term
from ingest.okh import read_design
from services.common import keys
from services.matcher.profiles import (
    DesignProfile,
    FacilityProfile,
    design_profile,
    facility_profile,
)
from services.notifier.store import Store as NotifierStore
from services.registry.entities import prepare
from services.registry.store import Store
from services.registry.writes import WriteMode
from tests.conftest import auth

LOSH = "OKH-LOSHv1.0"

# -- documents, as bytes a client sends ---------------------------------------------------


def design_doc(name: str, tsdc: Sequence[str] | None = None, material: str | None = None,
               **fields: Any) -> bytes:
    """An OKH-LOSH manifest as JSON; `fields` are further manifest keys, as written."""
    doc: dict[str, Any] = {"okhv": LOSH, "name": name}
    if tsdc is not None:
        doc["tsdc"] = list(tsdc)
    if material:
        doc["material"] = material
    return json.dumps(doc | fields).encode()


def design_toml(name: str, parts: int = 0, part_name_chars: int = 0) -> bytes:
    """A valid OKH-LOSH manifest as TOML whose size is mostly its parts' names: written by
    hand, not by a TOML library, so a test can tune its size to the byte."""
    head = f'okhv = "{LOSH}"\nname = "{name}"\nversion = "1"\nlicensor = "Lab"\n'
    body = "".join(f'[[part]]\nname = "part {i} {"x" * part_name_chars}"\n'
                   for i in range(parts))
    return (head + body).encode()


def facility_doc(name: str, processes: Sequence[str], *, status: str = "Active",
                 lat: float = 48.85, lon: float = 2.35, materials: Sequence[str] = (),
                 equipment: Sequence[dict[str, Any]] = ()) -> bytes:
    """An OKW facility record as JSON (in Paris unless told); `equipment` as written."""
    record: dict[str, Any] = {"name": name, "facility_status": status,
                              "manufacturing_processes": list(processes),
                              "typical_materials": list(materials),
                              "location": {"gps_coordinates": f"{lat}, {lon}"}}
    if equipment:
        record["equipment"] = list(equipment)
    return json.dumps(record).encode()


async def post_fan_out(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """120 labs, lab-000 to lab-119 (two in three print, the rest cut), then the design
    "bracket" that needs printing: one change that fans out to 80 matches."""
    for i in range(120):
        await client.post(f"/v1/facilities?id=lab-{i:03d}", content=facility_doc(
            f"Lab {i}", ["FDM"] if i % 3 else ["laser cutting"]), headers=headers)
    await client.post("/v1/designs?id=bracket", content=design_doc("Bracket", ["3DP"]),
                      headers=headers)


# -- models and matcher profiles --------------------------------------------------------

MANIFEST_HEADS: dict[str, dict[str, str]] = {
    "v1": {"okh-manifest-version": "1.0", "title": "A thing"},
    "losh": {"okhv": "OKH-LOSH-Edition 2.4", "name": "A thing"},
}


def manifest(edition: Literal["v1", "losh"] = "v1", **fields: Any) -> Design:
    """A manifest of the edition, with `fields` over its head, as the reader makes it."""
    return read_design(MANIFEST_HEADS[edition] | fields)


def inferred(design: Design) -> set[str]:
    """The processes the reader inferred (not stated in the manifest)."""
    return {t.id for t in design.processes if t.inferred}


def term(id_: str, **kw: Any) -> Term:
    return Term(id=id_, label=id_, **kw)


def design_model(processes: Sequence[str], materials: Sequence[str] = (),
                 parts: Sequence[Part] = (), id_: str = "d1") -> Design:
    """A design as the readers make it, its needs named by vocabulary ids."""
    return Design(id=id_, name=id_, okh_format="test", processes=[term(p) for p in processes],
                  materials=[term(m) for m in materials], parts=list(parts))


def facility_model(processes: Sequence[str], *, status: str = "active",
                   materials: Sequence[str] = (), equipment: Sequence[Equipment] = (),
                   id_: str = "f1", lat: float | None = None,
                   lon: float | None = None) -> Facility:
    """A facility as the readers make it, its capabilities named by vocabulary ids."""
    return Facility(id=id_, name=id_, status=status, processes=[term(p) for p in processes],
                    materials=[term(m) for m in materials], equipment=list(equipment),
                    location=Location(lat=lat, lon=lon))


def design(processes: Sequence[str], materials: Sequence[str] = (),
           parts: Sequence[Part] = (), id_: str = "d1", version: int = 1) -> DesignProfile:
    """A design's matcher profile."""
    return design_profile(design_model(processes, materials, parts, id_), version)


def facility(processes: Sequence[str], *, status: str = "active",
             materials: Sequence[str] = (), equipment: Sequence[Equipment] = (),
             id_: str = "f1", version: int = 1, lat: float | None = None,
             lon: float | None = None) -> FacilityProfile:
    """A facility's matcher profile."""
    return facility_profile(facility_model(processes, status=status, materials=materials,
                                           equipment=equipment, id_=id_, lat=lat, lon=lon),
                            version)


# -- subscriptions, through the notifier API ----------------------------------------------


async def subscribe(http: httpx.AsyncClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """A subscription made as its owner makes it; fails the test unless it is created."""
    response = await http.post("/v1/subscriptions", json=body, headers=auth(key))
    assert response.status_code == 201, response.text
    return response.json()


def webhook(url: str, **filter_: Any) -> dict[str, Any]:
    """The body of a webhook subscription; with no filter, none is sent."""
    return {"channel": "webhook", "url": url} | ({"filter": filter_} if filter_ else {})


async def email_subscription(http: httpx.AsyncClient, key: str, address: str,
                             **filter_: Any) -> dict[str, Any]:
    """An email subscription, not yet verified (and so holding no secret)."""
    made = await subscribe(http, key, {"channel": "email", "address": address,
                                       "filter": filter_})
    assert "secret" not in made and made["verified"] is False
    return made


async def enable(http: httpx.AsyncClient, key: str, sub_id: str, enabled: bool) -> None:
    response = await http.patch(f"/v1/subscriptions/{sub_id}", headers=auth(key),
                                json={"enabled": enabled})
    assert response.status_code == 200 and response.json()["enabled"] is enabled, response.text


async def deliveries(http: httpx.AsyncClient, key: str, sub_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/v1/subscriptions/{sub_id}/deliveries", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()["items"]


# -- match changes, as the matcher cuts them ----------------------------------------------

MatchPiece = tuple[str, bytes, dict[str, Any]]
ItemRow = tuple[str, str, str, int, datetime | None]


def match_pieces(design_id: str, facility_ids: Sequence[str], *, kind: str = "found",
                 version: int = 1, score: float = 0.5,
                 design_processes: Sequence[str] = (), lat: float | None = None,
                 lon: float | None = None,
                 max_payload: int = 1024 * 1024) -> list[matches.Piece]:
    """One design's change with its facilities (version 1, active): the pieces the
    matcher would publish for it."""
    cause = matches.Cause(entity="design", entity_id=design_id, version=version,
                          occurred_at=datetime.now(UTC))
    changed = matches.ChangedDesign(id=design_id, version=version,
                                    processes=list(design_processes))
    out = [matches.PairOut(kind, f, 1, score,  # type: ignore[arg-type]
                           [("status", "active", "met", None, None)], lat=lat, lon=lon)
           for f in facility_ids]
    return list(matches.encode_change(cause, changed, out, max_payload))


def match_piece(design_id: str, facility_ids: Sequence[str], version: int = 1) -> MatchPiece:
    """One MATCHES message: (message id, payload, decoded)."""
    [piece] = match_pieces(design_id, facility_ids, version=version)
    return piece.message_id, piece.payload, matches.decode(piece.payload, piece.headers)


def item_rows(subs: Sequence[str], change: dict[str, Any],
              only: set[str] | None = None) -> list[ItemRow]:
    """Every (subscription, pair) of the change, as the notifier's consumer makes them."""
    out = []
    for n, pair in enumerate(matches.pairs(change)):
        if only is not None and pair.facility_id not in only:
            continue
        event_id = matches.match_event_id(pair.kind, pair.design_id, pair.design_version,
                                          pair.facility_id, pair.facility_version)
        out.extend((s, event_id, change["message_id"], n, None) for s in subs)
    return out


async def add_items(store: NotifierStore, piece: MatchPiece, rows: Sequence[ItemRow]) -> int:
    """The piece and its rows into a notifier store, as its consumer adds them."""
    message_id, payload, _ = piece
    return await store.add_items([(message_id, payload, matches.ENCODING)], list(rows))


# -- registry writes, under the HTTP API --------------------------------------------------


async def write_design(store: Store, key: str, entity_id: str, body: bytes,
                       mode: WriteMode = WriteMode.create, version: int | None = None) -> None:
    """A TOML design straight through the registry store, under the key `key` (its secret
    form), with whatever event limit the store has now."""
    prepared = prepare(EntityKind.design, body, "application/toml", entity_id)
    parsed = keys.parse(key)
    assert parsed is not None
    await store.write(EntityKind.design, entity_id, prepared, mode=mode, key=parsed,
                      expected_version=version)
