"""Bad input gets a 4xx with {"error": {code, message, field}} and changes nothing."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import auth
from tests.support.helpers import InProcess, eventually, stream_messages

pytestmark = pytest.mark.asyncio(loop_scope="session")

CASES = [
    ("malformed TOML", "application/toml", b'name = "x\nokhv = ', 422, "syntax", None),
    ("malformed YAML", "application/yaml", b"title: [unclosed", 422, "syntax", None),
    ("malformed JSON", "application/json", b'{"title": ', 422, "syntax", None),
    ("not a mapping", "application/json", b"[1, 2]", 422, "type", None),
    ("no title", "application/yaml", b"description: nothing else", 422, "missing", "title"),
    ("title of wrong type", "application/yaml", b"title: {a: 1}", 422, "type", "title"),
    ("invalid UTF-8", "application/toml", b'name = "\xff\xfe"', 422, "encoding", None),
    ("unknown media type", "text/plain", b"title: x", 415, "unsupported_media_type",
     "Content-Type"),
    ("NaN in JSON", "application/json", b'{"title": NaN}', 422, "syntax", None),
    ("YAML alias bomb", "application/yaml", b"a: &a [1]\nb: *a\ntitle: x", 422, "syntax", None),
]


@pytest.mark.parametrize(("label", "media", "body", "status", "code", "field"), CASES,
                         ids=[c[0] for c in CASES])
async def test_bad_design_bodies_are_refused_with_the_reason(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        label: str, media: str, body: bytes, status: int, code: str, field: str | None) -> None:
    response = await client.post("/v1/designs", content=body,
                                 headers=auth(org[1]) | {"Content-Type": media})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["field"] == field and error["message"]
    listed = await client.get("/v1/designs")
    assert listed.json()["items"] == []


async def test_facility_errors_name_the_field(client: httpx.AsyncClient,
                                              org: tuple[str, str],
                                              registry: InProcess) -> None:
    key = auth(org[1]) | {"Content-Type": "application/json"}
    cases = [
        ({"name": "X", "location": {"gps_coordinates": "91.0, 2.0"}}, "location.gps_coordinates"),
        ({"name": "X", "location": {"coordinates": {"lat": 10, "lon": 200}}},
         "location.coordinates.lon"),
        ({"name": "X", "facility_status": "Sometimes"}, "facility_status"),
        ({"name": "X", "equipment": [{"x_travel": "12 parsecs"}]}, "equipment[0].x_travel"),
        ({"name": "X", "equipment": "drill"}, "equipment"),
        ({"location": {}}, "name"),
    ]
    for doc, field in cases:
        response = await client.post("/v1/facilities", content=json.dumps(doc), headers=key)
        assert response.status_code == 422, (doc, response.text)
        assert response.json()["error"]["field"] == field, (doc, response.json())
    bad_id = await client.post("/v1/facilities?id=has%20space", content=b'{"name": "X"}',
                               headers=key)
    assert bad_id.status_code == 422 and bad_id.json()["error"]["field"] == "id"
    long_id = await client.get("/v1/facilities/" + "a" * 65)
    assert long_id.status_code == 422 and long_id.json()["error"]["field"] == "id"
    near = await client.get("/v1/facilities", params={"near": "95,0", "radius_km": 5})
    assert near.status_code == 422 and near.json()["error"]["field"] == "near"
    assert (await client.get("/v1/facilities")).json()["items"] == []
    assert await stream_messages(registry.settings.nats_url) == []


async def test_bodies_over_2_mib_get_413(client: httpx.AsyncClient,
                                         org: tuple[str, str]) -> None:
    big = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = await client.post("/v1/facilities", content=big,
                                 headers=auth(org[1]) | {"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"

    async def chunks():
        for _ in range(40):
            yield b"x" * 65536

    streamed = await client.post("/v1/facilities", content=chunks(),
                                 headers=auth(org[1]) | {"Content-Type": "application/json"})
    assert streamed.status_code == 413


async def test_unknown_routes_and_methods_answer_in_the_error_shape(
        client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = await client.patch("/v1/designs")
    assert wrong.status_code == 405


async def test_operational_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    # ready once its relay has connected to NATS, which it does in the background
    ready = await eventually(lambda: _ready(client))
    assert ready.json()["checks"] == {"database": "ok", "nats": "ok", "publishing": "ok"}
    await client.get("/v1/designs")
    text = (await client.get("/metrics")).text
    assert 'makelocal_registry_http_requests_total{method="GET",route="/v1/designs",' \
           'status_class="2xx"}' in text
    for name in ("makelocal_registry_outbox_backlog", "makelocal_registry_events_published_total",
                 "makelocal_registry_outbox_oldest_age_seconds",
                 "makelocal_registry_http_request_duration_seconds_bucket"):
        assert name in text
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/designs/{entity_id}" in spec["paths"]


async def _ready(client: httpx.AsyncClient) -> httpx.Response | None:
    response = await client.get("/readyz")
    return response if response.status_code == 200 else None
