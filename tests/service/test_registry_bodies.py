"""The write routes' request bodies as the registry's OpenAPI document shows them: every
example there, sent as it stands with its media type, is read without a warning, and the
design examples name processes a facility can answer."""

from __future__ import annotations

import json

import httpx

from tests.conftest import auth


async def test_every_documented_example_is_read_as_documented(
        client: httpx.AsyncClient, org: tuple[str, str]) -> None:
    document = (await client.get("/openapi.json")).json()
    seen = 0
    for path, kind in (("/v1/designs", "design"), ("/v1/facilities", "facility"),
                       ("/v1/validate", None)):
        body = document["paths"][path]["post"]["requestBody"]
        assert body["required"] and "docs/manifests.md" in body["description"]
        assert set(body["content"]) == {"application/toml", "application/yaml",
                                        "application/json"}
        for media, content in body["content"].items():
            for name, example in content.get("examples", {}).items():
                value = example["value"]
                data = json.dumps(value) if media == "application/json" else value
                answer = await client.post(
                    "/v1/validate", params={"kind": kind or name}, content=data,
                    headers=auth(org[1]) | {"Content-Type": media})
                assert answer.status_code == 200, (path, media, answer.text)
                report = answer.json()
                assert report["kind"] == (kind or name) and report["warnings"] == [], report
                if report["kind"] == "design":
                    assert report["matchable"] is True, (media, report)
                    assert report["entity"]["processes"], report
                else:
                    assert report["entity"]["processes"], report
                    assert report["entity"]["location"]["lat"] is not None, report
                seen += 1
    assert seen >= 10  # 3 design and 2 facility examples, each on its route and on validate
