"""Every JSON answer of every service is described in its OpenAPI document (generated clients
get typed bodies), and an invalid request hears of every invalid field at once.

The documents are built from the apps (no database, broker or lifespan), and so are most
invalid requests, refused by validation before a handler runs (the notifier's needs a
key); the answers checked against the documents come from running services."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI, Query
from pydantic import BaseModel, Field

from services.common.errors import install_error_handlers
from tests.conftest import auth
from tests.support.builders import design_doc, facility_doc
from tests.support.helpers import JSON, InProcess, InProcessMatcher, eventually, wait_ready
from tests.support.receivers import Receiver


def _apps() -> dict[str, Callable[[], FastAPI]]:
    from services.matcher.app import create_app as matcher
    from services.notifier.app import create_app as notifier
    from services.registry.app import create_app as registry

    return {"registry": registry, "matcher": matcher, "notifier": notifier}


SERVICES = ["registry", "matcher", "notifier"]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/components/schemas/"), ref
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]]


def _successes(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(operation, status, content) of every 2xx answer the document lists."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("2"):
                    yield f"{method.upper()} {path} {status}", status, response.get(
                        "content", {})


def _described(document: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A schema that says what the body holds: its properties, or alternatives that do."""
    schema = _resolve(document, schema)
    if "oneOf" in schema or "anyOf" in schema:
        return all(_described(document, s) for s in schema.get("oneOf", schema.get("anyOf")))
    return schema.get("type") == "object" and bool(schema.get("properties")) and (
        schema.get("additionalProperties") is False)


@pytest.mark.parametrize("service", SERVICES)
def test_every_json_success_has_a_response_model(service: str) -> None:
    document = _apps()[service]().openapi()
    seen, missing = 0, []
    for operation, status, content in _successes(document):
        if status == "204":
            assert not content, operation  # no body
            continue
        if "text/html" in content:
            continue  # the email link pages, for people
        seen += 1
        schema = content.get("application/json", {}).get("schema", {})
        if not _described(document, schema):
            missing.append(f"{operation}: {schema}")
    assert seen, "no JSON answers found"
    assert not missing, "\n".join(missing)


def test_the_entity_answers_carry_the_entity_models() -> None:
    document = _apps()["registry"]().openapi()
    schemas = document["components"]["schemas"]
    for kind, model in (("design", "Design"), ("facility", "Facility")):
        for name in ("Written", "Read", "Listed"):
            body = schemas[f"{model}{name}"]
            assert body["properties"][kind] == {"$ref": f"#/components/schemas/{model}"}
            assert {"id", "version", "owner", kind} <= set(body["required"])
    created = document["paths"]["/v1/designs"]["post"]["responses"]
    assert created["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DesignWritten"}
    assert "errors" in schemas["ErrorBody"]["properties"]


class _Pair(BaseModel):
    name: str = Field(max_length=5)
    size: int = Field(ge=1)


def _checking_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/pairs")
    async def pairs(pair: _Pair, limit: int = Query(1, ge=1)) -> dict[str, str]:
        return {"name": pair.name}

    return app


async def _post(app: FastAPI, url: str, body: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(url, json=body)


async def test_every_validation_error_is_returned() -> None:
    response = await _post(_checking_app(), "/pairs?limit=0",
                           {"name": "far too long", "size": 0})
    assert response.status_code == 422, response.text
    body = response.json()
    fields = [e["field"] for e in body["errors"]]
    assert sorted(fields) == ["limit", "name", "size"], body
    for error in body["errors"]:
        assert set(error) == {"code", "message", "field"} and error["code"] == "invalid"
        assert error["message"]
    # the first is also `error`, as clients that read only it expect
    assert body["error"] == body["errors"][0]
    assert set(body["error"]) == {"code", "message", "field"}


async def test_one_validation_error_keeps_the_single_shape() -> None:
    response = await _post(_checking_app(), "/pairs", {"name": "ok", "size": 0})
    assert response.status_code == 422, response.text
    assert response.json() == {"error": {"code": "invalid", "message": response.json()[
        "error"]["message"], "field": "size"}}


async def test_a_subscription_with_two_bad_fields_names_both(
        notifier: InProcess, org: tuple[str, str]) -> None:
    # the notifier wants a valid key before it reads a body: a running one, with a key
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        response = await http.post("/v1/subscriptions", headers=auth(org[1]), json={
            "channel": "webhook", "url": "", "contact_email": "not an address"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert {e["field"] for e in body["errors"]} == {"url", "contact_email"}, body
    assert body["error"] == body["errors"][0]


async def test_matcher_query_errors_are_all_named() -> None:
    app = _apps()["matcher"]()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/v1/designs/d/facilities",
                                    params={"limit": 0, "radius_km": -1})
    assert response.status_code == 422, response.text
    body = response.json()
    assert {e["field"] for e in body["errors"]} == {"limit", "radius_km"}, body


# Real answers against the documented schemas: the models must be exact (the fuzzing
# tests reach few successful writes with made-up manifests).

def _checker(document: dict[str, Any]) -> Callable[[str, str, str, httpx.Response], None]:
    def conforms(method: str, path: str, status: str, response: httpx.Response) -> None:
        assert str(response.status_code) == status, (method, path, response.text)
        content = document["paths"][path][method]["responses"][status]["content"]
        schema = content["application/json"]["schema"] | {
            "components": document["components"]}
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                    for e in validator.iter_errors(response.json())]
        assert not problems, (method, path, problems, response.json())

    return conforms


async def test_registry_answers_conform(client: httpx.AsyncClient, org: tuple[str, str],
                                        registry: InProcess) -> None:
    check = _checker(_apps()["registry"]().openapi())
    key = auth(org[1]) | JSON
    design = json.loads(design_doc("Part", ["3DP"], "PLA"))
    check("post", "/v1/designs", "201",
          await client.post("/v1/designs?id=part", json=design, headers=key))
    check("post", "/v1/designs", "200",  # the same again: nothing changed
          await client.post("/v1/designs?id=part", json=design, headers=key))
    check("post", "/v1/facilities", "201",
          await client.post("/v1/facilities?id=lab", content=facility_doc("Lab", ["3D printing"]),
                            headers=key))
    for plural in ("designs", "facilities"):
        one = await client.get(f"/v1/{plural}/{'part' if plural == 'designs' else 'lab'}")
        check("get", f"/v1/{plural}/{{entity_id}}", "200", one)
        check("get", f"/v1/{plural}", "200", await client.get(f"/v1/{plural}"))
    check("get", "/v1/facilities", "200",
          await client.get("/v1/facilities", params={"near": "48.8,2.3", "radius_km": 50}))
    replaced = await client.put("/v1/designs/part", json=design | {"name": "Part 2"},
                                headers=key | {"If-Match": '"1"'})
    check("put", "/v1/designs/{entity_id}", "200", replaced)
    for body in (design, json.loads(facility_doc("Lab", ["3D printing"]))):
        check("post", "/v1/validate", "200",
              await client.post("/v1/validate", json=body, headers=key))
    check("delete", "/v1/designs/{entity_id}", "200",
          await client.delete("/v1/designs/part", headers=auth(org[1]) | {"If-Match": '"2"'}))


async def test_matcher_answers_conform(registry: InProcess, client: httpx.AsyncClient,
                                       matcher_settings: Any, org: tuple[str, str]) -> None:
    key = auth(org[1]) | JSON
    await client.post("/v1/facilities?id=lab", content=facility_doc("Lab", ["3D printing"]),
                      headers=key)
    await client.post("/v1/designs?id=part", headers=key, content=design_doc("Part", ["3DP"]))
    await client.post("/v1/designs?id=vague", headers=key, content=design_doc("Vague"))
    check = _checker(_apps()["matcher"]().openapi())
    async with InProcessMatcher(matcher_settings) as matcher, httpx.AsyncClient(
            base_url=matcher.url, timeout=10) as http:
        await wait_ready(matcher.url)

        async def indexed() -> bool:
            found = await http.get("/v1/designs/part/facilities", params={
                "near": "48.8,2.3", "radius_km": 50})
            return found.status_code == 200 and bool(found.json()["matches"]) and (
                await http.get("/v1/designs/vague/facilities")).status_code == 200

        await eventually(indexed)
        check("get", "/v1/designs/{design_id}/facilities", "200",
              await http.get("/v1/designs/part/facilities",
                             params={"near": "48.8,2.3", "radius_km": 50}))
        check("get", "/v1/designs/{design_id}/facilities", "200",
              await http.get("/v1/designs/vague/facilities"))
        check("get", "/v1/designs/needing-information", "200",
              await http.get("/v1/designs/needing-information", params={"limit": 1}))
        check("get", "/v1/facilities/{facility_id}/designs", "200",
              await http.get("/v1/facilities/lab/designs"))
        check("get", "/v1/match", "200",
              await http.get("/v1/match", params={"design": "part", "facility": "lab"}))


async def test_notifier_answers_conform(notifier: InProcess, org: tuple[str, str],
                                        receiver: tuple[Receiver, str]) -> None:
    _, base = receiver
    check = _checker(_apps()["notifier"]().openapi())
    key = auth(org[1])
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        await wait_ready(notifier.url)
        hook = await http.post("/v1/subscriptions", headers=key, json={
            "channel": "webhook", "url": f"{base}/ok", "contact_email": "ops@example.org",
            "filter": {"processes": ["3d-printing"],
                       "region": {"lat": 48.8, "lon": 2.3, "radius_km": 30}}})
        check("post", "/v1/subscriptions", "201", hook)
        check("post", "/v1/subscriptions", "201", await http.post(
            "/v1/subscriptions", headers=key, json={"channel": "email",
                                                    "address": "me@example.org"}))
        sub = hook.json()["id"]
        path = "/v1/subscriptions/{subscription_id}"
        check("get", "/v1/subscriptions", "200", await http.get("/v1/subscriptions",
                                                                headers=key))
        check("get", path, "200", await http.get(f"/v1/subscriptions/{sub}", headers=key))
        check("patch", path, "200", await http.patch(
            f"/v1/subscriptions/{sub}", headers=key, json={"filter": {"design_ids": ["d"]}}))
        check("post", f"{path}/rotate-secret", "200",
              await http.post(f"/v1/subscriptions/{sub}/rotate-secret", headers=key))
        check("post", f"{path}/test", "202",
              await http.post(f"/v1/subscriptions/{sub}/test", headers=key))

        async def attempted() -> bool:
            items = (await http.get(f"/v1/subscriptions/{sub}/deliveries",
                                    headers=key)).json()["items"]
            return bool(items) and bool(items[0]["attempts_log"])

        await eventually(attempted)
        check("get", f"{path}/deliveries", "200",
              await http.get(f"/v1/subscriptions/{sub}/deliveries", headers=key))
        check("post", f"{path}/recover", "202", await http.post(
            f"/v1/subscriptions/{sub}/recover", headers=key,
            params={"since": "2020-01-01T00:00:00Z"}))
        token = await notifier.app.state.store.pool.fetchval(
            "SELECT unsubscribe_token FROM subscriptions WHERE channel = 'email'")
        check("get", "/v1/email/subscription", "200",
              await http.get("/v1/email/subscription", params={"token": token}))
