"""The registry's HTTP API against real PostgreSQL and NATS."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import auth
from tests.support.builders import facility_doc
from tests.support.helpers import TOML, YAML, InProcess, eventually, stream_messages

pytestmark = pytest.mark.asyncio(loop_scope="session")

JSON = {"Content-Type": "application/json"}


PRINTER = {"equipment_type": "3D printer", "manufacturing_process": "FDM",
           "build_volume": "220 x 220 x 250 mm", "materials_worked": ["PLA"]}


def lab(name: str = "Fab Lab Test", lat: float = 48.85, lon: float = 2.35) -> bytes:
    """A lab whose processes come only from its printer."""
    return facility_doc(name, [], lat=lat, lon=lon, equipment=[PRINTER])


async def test_posting_a_losh_manifest_returns_the_normalized_design(
        client: httpx.AsyncClient, org: tuple[str, str], data_dir) -> None:
    body = (data_dir / "okh" / "ohloom.okh.toml").read_bytes()
    response = await client.post("/v1/designs", content=body, headers=auth(org[1]) | TOML)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["version"] == 1 and created["owner"] == org[0]
    design = created["design"]
    assert {t["id"] for t in design["processes"]} >= {"fdm", "cnc-machining"}
    assert {"pla", "abs", "wood"} <= {t["id"] for t in design["materials"]}
    clamp = next(p for p in design["parts"] if p["name"] == "Clamp Ring")
    assert clamp["outer_dimensions"] == {"x_mm": 56.0, "y_mm": 56.0, "z_mm": 30.0}
    assert design["license"] == "CC-BY-SA-4.0"
    assert response.headers["etag"] == '"1"'

    fetched = await client.get(f"/v1/designs/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["manifest"]["content"] == body.decode()
    assert fetched.json()["manifest"]["media_type"] == "toml"
    assert fetched.headers["etag"] == '"1"'


async def test_okh_v1_yaml_processes_are_inferred_and_marked(
        client: httpx.AsyncClient, org: tuple[str, str], data_dir) -> None:
    body = (data_dir / "okh" / "switch-mounting-plate-gopro.okh.yml").read_bytes()
    response = await client.post("/v1/designs", content=body, headers=auth(org[1]) | YAML)
    assert response.status_code == 201, response.text
    processes = response.json()["design"]["processes"]
    assert [(p["id"], p["inferred"]) for p in processes] == [("3d-printing", True)]


async def test_every_change_is_one_event_in_the_registry_stream(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess) -> None:
    key = auth(org[1]) | JSON
    created = await client.post("/v1/facilities?id=lab-1", content=lab(), headers=key)
    assert created.status_code == 201
    updated = await client.put("/v1/facilities/lab-1", content=lab(name="Renamed"),
                               headers=key | {"If-Match": '"1"'})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    deleted = await client.delete("/v1/facilities/lab-1", headers=auth(org[1]))
    assert deleted.status_code == 200 and deleted.json()["version"] == 3

    async def all_three() -> list:
        messages = await stream_messages(registry.settings.nats_url)
        return messages if len(messages) >= 1 and messages[-1]["version"] == 3 else []

    messages = await eventually(all_three)
    # The stream is compacted per entity: only the latest event of lab-1 remains.
    assert len(messages) == 1
    last = messages[0]
    assert last["type"] == "facility.deleted" and last["data"] is None
    assert last["subject"] == "registry.facility.lab-1"
    assert last["_msg_id"] == last["event_id"]
    # each write names its event (what `makelocal trace` follows); all three differ
    ids = [r.json()["event_id"] for r in (created, updated, deleted)]
    assert ids[2] == last["event_id"] and len(set(ids)) == 3
    assert (await client.get("/v1/facilities/lab-1")).status_code == 404


async def test_writes_need_the_owning_organizations_key(
        client: httpx.AsyncClient, org: tuple[str, str], store) -> None:
    _, other_key = await store.create_organization("Other Lab")
    no_key = await client.post("/v1/facilities?id=lab-2", content=lab(), headers=JSON)
    assert no_key.status_code == 401 and no_key.json()["error"]["field"] == "Authorization"
    bad_key = await client.post("/v1/facilities?id=lab-2", content=lab(),
                                headers=JSON | auth("mlk_0000000000000000_" + "a" * 43))
    assert bad_key.status_code == 401
    ok = await client.post("/v1/facilities?id=lab-2", content=lab(), headers=JSON | auth(org[1]))
    assert ok.status_code == 201
    foreign = await client.put("/v1/facilities/lab-2", content=lab(name="Mine now"),
                               headers=JSON | auth(other_key) | {"If-Match": '"1"'})
    assert foreign.status_code == 403
    foreign_delete = await client.delete("/v1/facilities/lab-2", headers=auth(other_key))
    assert foreign_delete.status_code == 403
    await store.revoke_key(org[1])
    revoked = await client.delete("/v1/facilities/lab-2", headers=auth(org[1]))
    assert revoked.status_code == 401
    assert (await client.get("/v1/facilities/lab-2")).json()["facility"]["name"] == "Fab Lab Test"


async def test_put_needs_a_current_if_match(client: httpx.AsyncClient,
                                            org: tuple[str, str]) -> None:
    key = auth(org[1]) | JSON
    await client.post("/v1/facilities?id=lab-3", content=lab(), headers=key)
    missing = await client.put("/v1/facilities/lab-3", content=lab(name="B"), headers=key)
    assert missing.status_code == 428
    ok = await client.put("/v1/facilities/lab-3", content=lab(name="B"),
                          headers=key | {"If-Match": '"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == '"2"'
    stale = await client.put("/v1/facilities/lab-3", content=lab(name="C"),
                             headers=key | {"If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.json()["error"] == {"code": "precondition_failed", "field": "If-Match",
                                     "message": "version 1 is stale; current is 2"}


async def test_identical_content_is_not_a_new_version(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess) -> None:
    key = auth(org[1]) | JSON
    await client.post("/v1/facilities?id=lab-4", content=lab(), headers=key)
    again = await client.put("/v1/facilities/lab-4", content=lab(),
                             headers=key | {"If-Match": '"1"'})
    assert again.status_code == 200
    assert again.json()["changed"] is False and again.json()["version"] == 1
    repost = await client.post("/v1/facilities?id=lab-4", content=lab(), headers=key)
    assert repost.status_code == 200 and repost.json()["changed"] is False
    messages = await eventually(lambda: stream_messages(registry.settings.nats_url))
    assert [m["version"] for m in messages] == [1]


async def test_list_filters_through_the_process_hierarchy_and_distance(
        client: httpx.AsyncClient, org: tuple[str, str]) -> None:
    key = auth(org[1]) | JSON
    await client.post("/v1/facilities?id=paris", content=lab("Paris Lab"), headers=key)
    await client.post("/v1/facilities?id=lyon", content=lab("Lyon Lab", 45.76, 4.84),
                      headers=key)
    await client.post("/v1/facilities?id=laser", headers=key,
                      content=facility_doc("Laser Shop", ["laser cutting"], lat=48.86, lon=2.34))

    async def ids(**params: object) -> list[str]:
        response = await client.get("/v1/facilities", params=params)
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["items"]]

    assert await ids(process="3d-printing") == ["lyon", "paris"]
    assert await ids(process="Q3062349") == ["laser"]
    assert await ids(near="48.85,2.35", radius_km=50) == ["laser", "paris"]
    assert await ids(near="48.85,2.35", radius_km=500, process="fdm") == ["lyon", "paris"]
    assert await ids(q="lyon") == ["lyon"]
    assert await ids(material="thermoplastic") == []  # facility materials are on equipment
    first = await client.get("/v1/facilities", params={"limit": 2})
    page = first.json()
    assert [i["id"] for i in page["items"]] == ["laser", "lyon"]
    rest = await client.get("/v1/facilities", params={"limit": 2, "cursor": page["next_cursor"]})
    assert [i["id"] for i in rest.json()["items"]] == ["paris"]
    assert rest.json()["next_cursor"] is None


async def test_design_filters_by_material_owner_and_text(
        client: httpx.AsyncClient, org: tuple[str, str], data_dir) -> None:
    for name in ("ohloom.okh.toml", "planktoscope.okh.toml"):
        body = (data_dir / "okh" / name).read_bytes()
        assert (await client.post("/v1/designs", content=body,
                                  headers=auth(org[1]) | TOML)).status_code == 201

    async def names(**params: object) -> list[str]:
        response = await client.get("/v1/designs", params=params)
        return sorted(i["design"]["name"] for i in response.json()["items"])

    assert await names(material="thermoplastic") == ["OHLOOM"]
    assert await names(process="pcb-fabrication") == ["PlanktoScope"]
    assert await names(process="machining") == ["OHLOOM", "PlanktoScope"]
    assert await names(owner=org[0]) == ["OHLOOM", "PlanktoScope"]
    assert await names(owner="org_nobody") == []
    assert await names(q="oceanography") == ["PlanktoScope"]


async def test_a_write_that_changes_nothing_names_no_event(
        client: httpx.AsyncClient, org: tuple[str, str]) -> None:
    key = auth(org[1]) | JSON
    made = await client.post("/v1/facilities?id=same-lab", content=lab(), headers=key)
    again = await client.put("/v1/facilities/same-lab", content=lab(),
                             headers=key | {"If-Match": made.headers["etag"]})
    assert made.json()["event_id"] and again.json()["changed"] is False
    assert again.json()["event_id"] is None


async def test_a_list_can_name_its_ids(client: httpx.AsyncClient,
                                       org: tuple[str, str]) -> None:
    for name in ("ids-a", "ids-b", "ids-c"):
        await client.post(f"/v1/facilities?id={name}", content=lab(name),
                          headers=auth(org[1]) | JSON)
    listed = await client.get("/v1/facilities", params={"id": ["ids-a", "ids-c", "nope"]})
    assert [i["id"] for i in listed.json()["items"]] == ["ids-a", "ids-c"]
    bad = await client.get("/v1/facilities", params={"id": ["ok", "no/slash"]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "id"
