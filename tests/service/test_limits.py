"""Every size limit, one table: what is over it is refused with 413 or 422, the field named,
nothing stored. Bodies are refused before they are read whole (the declared length, or
the bytes counted as they stream)."""

from __future__ import annotations

import json

import httpx
import pytest

from ingest.fields import MAX_LIST, MAX_TEXT
from ingest.okh import MAX_PARTS
from tests.conftest import auth
from tests.support.builders import design_doc
from tests.support.helpers import JSON, InProcess, stream_messages, wait_ready

MIB = 1024 * 1024


REGISTRY_LIMITS = [
    # (method, path, body, status, error code, field)
    ("POST", "/v1/designs",
     design_doc("Limits", part=[{"name": f"p{i}"} for i in range(MAX_PARTS + 1)]),
     422, "too_long", "part"),
    ("POST", "/v1/designs", design_doc(name="n" * (MAX_TEXT + 1)), 422, "too_long", "name"),
    ("POST", "/v1/designs", design_doc("Limits", tsdc=["3DP"] * (MAX_LIST + 1)), 422,
     "too_long", "tsdc"),
    ("POST", "/v1/facilities", json.dumps({
        "name": "Big", "equipment": [{"equipment_type": "3D printer"}] * (MAX_LIST + 1)}
     ).encode(), 422, "too_long", "equipment"),
    ("POST", "/v1/designs", b'{"name": "' + b"x" * (2 * MIB) + b'"}', 413, "too_large", "body"),
    ("GET", "/v1/designs?limit=201", None, 422, "invalid", "limit"),
    ("GET", "/v1/designs?q=" + "q" * 201, None, 422, "invalid", "q"),
    ("GET", "/v1/designs?cursor=" + "c" * 501, None, 422, "invalid", "cursor"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "field"),
                         REGISTRY_LIMITS, ids=[f"{r[0]} {r[1][:30]} {r[4]} {r[5]}"
                                               for r in REGISTRY_LIMITS])
async def test_registry_limits(client: httpx.AsyncClient, registry: InProcess,
                               org: tuple[str, str], method: str, path: str,
                               body: bytes | None, status: int, code: str,
                               field: str) -> None:
    response = await client.request(method, path, content=body, headers=auth(org[1]) | JSON)
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == code and error["field"] == field, error
    assert (await client.get("/v1/designs")).json()["items"] == []
    assert await stream_messages(registry.settings.nats_url) == []


async def test_notifier_limits(notifier: InProcess, org: tuple[str, str]) -> None:
    hook = {"channel": "webhook", "url": "http://127.0.0.1:9/hook"}
    cases = [
        (hook | {"filter": {"facility_ids": [f"f{i}" for i in range(1001)]}}, 422,
         "filter.facility_ids"),
        (hook | {"filter": {"processes": ["3DP"] * 101}}, 422, "filter.processes"),
        (hook | {"url": "http://127.0.0.1/" + "u" * 2048}, 422, "url"),
        (hook | {"padding": "x" * (2 * MIB)}, 413, "body"),
    ]
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=20) as http:
        for body, status, field in cases:
            response = await http.post("/v1/subscriptions", json=body, headers=auth(org[1]))
            assert response.status_code == status, response.text[:300]
            # as the client wrote it: not pydantic's webhook.filter.facility_ids
            assert response.json()["error"]["field"] == field, response.json()
        too_many = await http.get("/v1/subscriptions?limit=501", headers=auth(org[1]))
        assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "limit"
        assert (await http.get("/v1/subscriptions", headers=auth(org[1]))).json()["items"] == []
