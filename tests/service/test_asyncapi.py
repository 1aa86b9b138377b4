"""The AsyncAPI documents: each service's, as its app serves it at /asyncapi, is a valid
AsyncAPI 3.0 document by the AsyncAPI project's own parser (@asyncapi/parser, pinned in
tests/asyncapi/package-lock.json and installed by .ci/run with `npm ci`); each service
sends and receives what it does; the payload schemas are those of the models events are
made with."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.asyncapi import CHANNELS, SERVICES, document
from contracts.events import DesignEvent, FacilityEvent
from contracts.matches import MatchChange
from services.matcher.app import create_app as matcher_app
from services.matcher.settings import MatcherSettings
from services.notifier.app import create_app as notifier_app
from services.notifier.settings import NotifierSettings
from services.registry.app import create_app as registry_app
from services.registry.settings import RegistrySettings
from tests.support.paths import TESTS

CHECKER = TESTS / "asyncapi"
NATS_URL = "nats://user:secret@a:4222,nats://b:4223"
APPS = {"registry": (registry_app, RegistrySettings),
        "matcher": (matcher_app, MatcherSettings),
        "notifier": (notifier_app, NotifierSettings)}
# What each service does on NATS: (action, channel address, message).
EXPECTED = {
    "registry": {("send", "registry.design.{design_id}", "DesignEvent"),
                 ("send", "registry.facility.{facility_id}", "FacilityEvent")},
    "matcher": {("receive", "registry.design.{design_id}", "DesignEvent"),
                ("receive", "registry.facility.{facility_id}", "FacilityEvent"),
                ("send", "matches.design.{design_id}", "MatchChange"),
                ("send", "matches.facility.{facility_id}", "MatchChange")},
    "notifier": {("receive", "matches.design.{design_id}", "MatchChange"),
                 ("receive", "matches.facility.{facility_id}", "MatchChange")},
}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(doc: dict, ref: str) -> Any:
    """What a local $ref names, following a reference to a reference."""
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return resolve(doc, node["$ref"]) if isinstance(node, dict) and "$ref" in node else node


async def served(service: str) -> dict[str, Any]:
    """The document the service's app serves (its lifespan not run: nothing connects)."""
    create, settings = APPS[service]
    app = create(settings(nats_url=NATS_URL))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                 base_url="http://test") as client:
        answer = await client.get("/asyncapi")
    assert answer.status_code == 200, answer.text
    return answer.json()


def parser_check(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    """tests/asyncapi/validate.mjs on the files: @asyncapi/parser's diagnostics."""
    node = shutil.which("node")
    assert node, "node (20 or later) is needed to run @asyncapi/parser"
    assert (CHECKER / "node_modules" / "@asyncapi" / "parser" / "package.json").is_file(), (
        "@asyncapi/parser is not installed: run `npm ci --prefix tests/asyncapi` "
        "(.ci/run does)")
    return subprocess.run([node, str(CHECKER / "validate.mjs"), *map(str, paths)],
                          capture_output=True, text=True, timeout=60, check=False)


async def test_every_served_document_is_valid_asyncapi_3_by_its_parser(
        tmp_path: Path) -> None:
    paths = []
    for service in SERVICES:
        doc = await served(service)
        assert doc == document(service, NATS_URL)
        paths.append(tmp_path / f"{service}.json")
        paths[-1].write_text(json.dumps(doc))
    start = time.monotonic()
    checked = parser_check(paths)
    report = checked.stdout + checked.stderr
    assert checked.returncode == 0, report
    for path in paths:
        assert f"{path}: valid AsyncAPI 3.0.0" in report, report
    assert " error " not in report, report
    assert time.monotonic() - start < 30


def test_the_parser_check_fails_an_invalid_document(tmp_path: Path) -> None:
    """The check can fail: an AsyncAPI 2 operation name, a parameter the address lacks."""
    doc = document("matcher", NATS_URL)
    doc["operations"]["sendMatchesDesign"]["action"] = "publish"
    doc["channels"]["matchesFacility"]["parameters"]["partition"] = {}
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    checked = parser_check([tmp_path / "bad.json"])
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "operations/sendMatchesDesign/action" in checked.stdout
    assert "asyncapi3-channel-parameters" in checked.stdout


@pytest.mark.parametrize("service", list(SERVICES))
def test_each_service_sends_and_receives_what_it_does(service: str) -> None:
    doc = document(service, NATS_URL)
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] == f"makelocal {service}"
    done = set()
    for operation in doc["operations"].values():
        channel = resolve(doc, operation["channel"]["$ref"])
        for message in operation["messages"]:
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
            done.add((operation["action"], channel["address"],
                      resolve(doc, message["$ref"])["name"]))
    assert done == EXPECTED[service]
    assert {c["address"] for c in doc["channels"].values()} == {a for _, a, _ in done}


def test_channels_servers_headers_and_payloads() -> None:
    for service in SERVICES:
        doc = document(service, NATS_URL)
        for ref in refs(doc):
            assert resolve(doc, ref) is not None, (service, ref)
        for channel in doc["channels"].values():
            assert set(channel["parameters"]) == {
                p[1:-1] for p in channel["address"].split(".") if p.startswith("{")}
            assert channel["x-jetstream-stream"] in {"REGISTRY", "MATCHES"}
        # one server a NATS URL, never its credentials
        assert doc["servers"] == {
            "nats": {"host": "a:4222", "protocol": "nats",
                     "description": "A NATS JetStream server."},
            "nats-2": {"host": "b:4223", "protocol": "nats",
                       "description": "A NATS JetStream server."}}
        assert "secret" not in json.dumps(doc)
    assert {spec["model"] for spec in CHANNELS.values()} == {
        DesignEvent, FacilityEvent, MatchChange}
    components = document("matcher", NATS_URL)["components"]
    for model in (DesignEvent, FacilityEvent, MatchChange):
        schema = components["schemas"][model.__name__]
        assert set(schema["required"]) == {n for n, f in model.model_fields.items()
                                           if f.is_required()}
        assert set(schema["properties"]) == set(model.model_fields)
        headers = components["messages"][model.__name__]["headers"]
        assert "Nats-Msg-Id" in headers["required"]
    assert components["messages"]["MatchChange"]["headers"]["properties"][
        "Content-Encoding"]["const"] == "deflate"
    assert "Content-Encoding" not in components["messages"]["DesignEvent"]["headers"][
        "properties"]
