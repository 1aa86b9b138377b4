"""`POST /v1/validate` and the matcher's "needs information", against real PostgreSQL, NATS
and a matcher: what a write would store is reported and nothing is stored; a design that
says nothing of how to make it is listed as waiting for information, not as matching
nothing; and a design whose need is inferred from a size in words meets only a facility
whose machine takes it."""

from __future__ import annotations

import json

import httpx
import pytest

from services.matcher.settings import MatcherSettings
from tests.conftest import auth
from tests.support.helpers import JSON, InProcess, InProcessMatcher, eventually, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")

YAML = {"Content-Type": "application/yaml"}
SLIPPED = b"title: Switch plate\nuser-handle: @makers\ndesign-files: [plate.stl]\n"
PLATE = (b"okh-manifest-version: 1.0.0\ntitle: Switch plate\n"
         b"tool-list: ['A 3D printer with a bed at least 170 mm wide']\n")


async def test_validate_reports_and_stores_nothing(client: httpx.AsyncClient,
                                                   org: tuple[str, str]) -> None:
    before = (await client.get("/v1/designs")).json()
    answer = await client.post("/v1/validate", content=PLATE, headers=auth(org[1]) | YAML)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["kind"] == "design" and result["matchable"] is True
    [need] = result["inferred"]
    assert (need["id"], need["field"]) == ("3d-printing", "tool-list")
    assert "3D printer" in need["evidence"] and need["confidence"] > 0.5
    [size] = result["sizes"]
    assert size["size_mm"] == {"x_mm": 170.0} and size["processes"] == ["3d-printing"]
    assert (await client.get("/v1/designs")).json() == before

    slip = await client.post("/v1/validate", content=SLIPPED, headers=auth(org[1]) | YAML)
    assert slip.status_code == 422
    error = slip.json()["error"]
    assert (error["code"], error["line"], error["column"]) == ("syntax", 2, 14)
    assert error["text"] == "user-handle: @makers" and "'@'" in error["message"]

    facility = await client.post("/v1/validate", content=json.dumps(
        {"name": "Lab", "manufacturing_processes": ["laser cutting"]}).encode(),
        headers=auth(org[1]) | JSON)
    assert facility.json()["kind"] == "facility"
    forced = await client.post("/v1/validate", params={"kind": "facility"}, content=PLATE,
                               headers=auth(org[1]) | YAML)
    assert forced.status_code == 422 and forced.json()["error"]["field"] == "name"

    refused = await client.post("/v1/validate", content=PLATE,
                                headers=auth("mk_made_up.secret") | YAML)
    assert refused.status_code == 401 and "secret" not in refused.text


async def test_a_design_saying_nothing_needs_information(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        matcher_settings: MatcherSettings) -> None:
    key = auth(org[1])
    async with InProcessMatcher(matcher_settings) as matcher, httpx.AsyncClient(
            base_url=matcher.url) as query:
        await wait_ready(matcher.url)
        silent = await client.post("/v1/designs?id=silent", headers=key | YAML, content=(
            b"title: A lamp\ndescription: A nice lamp for the living room.\n"))
        assert silent.status_code == 201
        [warning] = [w for w in silent.json()["design"]["warnings"] if "no process" in w]
        assert "`manufacturing-processes`" in warning and "`tool-list`" in warning
        for name, width in (("small", 150), ("big", 220)):
            await client.post(f"/v1/facilities?id={name}", headers=key | JSON,
                              content=json.dumps({
                                  "name": name, "location": {"gps_coordinates": "48.8, 2.3"},
                                  "equipment": [{"equipment_type": "3D printer",
                                                 "build_volume": f"{width} x {width} x 150 mm"}],
                              }).encode())
        await client.post("/v1/designs?id=plate", headers=key | YAML, content=PLATE)

        async def indexed() -> dict | None:
            answer = (await query.get("/v1/designs/plate/facilities")).json()
            return answer if answer.get("matches") else None

        plate = await eventually(indexed, timeout=20)
        assert plate["status"] == "matchable"
        assert [m["facility"] for m in plate["matches"]] == ["big"]
        [process] = [r for r in plate["matches"][0]["explanation"] if r["kind"] == "process"]
        assert process["note"] == "inferred from the manifest"
        assert plate["matches"][0]["score"] < 1.0
        assert [m["facility"] for m in plate["near_misses"]] == ["small"]

        answer = (await query.get("/v1/designs/silent/facilities")).json()
        assert answer["status"] == "needs_information" and answer["matches"] == []
        assert "manufacturing-processes" in answer["needs"]
        listed = (await query.get("/v1/designs/needing-information")).json()
        assert "silent" in [d["design"] for d in listed["designs"]]
        assert "plate" not in [d["design"] for d in listed["designs"]]
        paged = (await query.get("/v1/designs/needing-information",
                                 params={"after": "silent"})).json()
        assert "silent" not in [d["design"] for d in paged["designs"]]
