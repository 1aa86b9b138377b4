"""Every write route of every service against every kind of caller: no key, a malformed
key, a revoked key, another organization's key, and the right key. Only the last one
succeeds, the others change nothing and get a JSON error. The table must name every write
route the apps have, so a new route cannot go untested. A second test: writes past a key's
limit get 429 with Retry-After. Throughout, no key or webhook secret appears in any log
line."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.common.logs import JsonFormatter
from services.registry.settings import RegistrySettings
from services.registry.store import Store
from tests.conftest import auth
from tests.support.builders import design_doc, facility_doc, subscribe, webhook
from tests.support.helpers import (
    JSON,
    InProcess,
    InProcessRegistry,
    assert_never_logged,
    eventually,
)
from tests.support.receivers import Receiver

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
PUBLIC = {  # no key by design: the one-click links in an email
    ("POST", "/v1/email/unsubscribe"), ("GET", "/v1/email/verify"),
    ("POST", "/v1/email/verify")}


@dataclass
class Case:
    service: str  # "registry" | "notifier"
    method: str
    route: str  # the route's path template, as the app declares it
    url: Callable[[dict[str, Any]], str]
    body: Callable[[dict[str, Any]], dict[str, Any]] = lambda _: {}
    ok: int = 200
    # False: the route makes something new and names nothing of the owner's, so another
    # organization's key simply makes its own (and must leave the owner's untouched)
    targets_owned: bool = True


def _etag(ctx: dict[str, Any], name: str) -> dict[str, Any]:
    return {"headers": JSON | {"If-Match": ctx["etags"][name]}}


CASES = [
    Case("registry", "POST", "/v1/facilities", lambda c: f"/v1/facilities?id={c['new']}-lab",
         lambda _: {"content": facility_doc("New", ["FDM"]), "headers": JSON}, 201),
    Case("registry", "PUT", "/v1/facilities/{entity_id}", lambda _: "/v1/facilities/acl-lab",
         lambda c: {"content": facility_doc("Changed", ["laser cutting"])} | _etag(c, "acl-lab")),
    Case("registry", "DELETE", "/v1/facilities/{entity_id}",
         lambda _: "/v1/facilities/acl-lab", lambda c: _etag(c, "acl-lab")),
    Case("registry", "POST", "/v1/designs", lambda c: f"/v1/designs?id={c['new']}-design",
         lambda _: {"content": design_doc("New", ["3DP"]), "headers": JSON}, 201),
    Case("registry", "PUT", "/v1/designs/{entity_id}", lambda _: "/v1/designs/acl-design",
         lambda c: {"content": design_doc("Changed", ["LAS"])} | _etag(c, "acl-design")),
    Case("registry", "DELETE", "/v1/designs/{entity_id}", lambda _: "/v1/designs/acl-design",
         lambda c: _etag(c, "acl-design")),
    # any organization's key may ask what a document would give; nothing is stored
    Case("registry", "POST", "/v1/validate", lambda _: "/v1/validate",
         lambda _: {"content": design_doc("Asked", ["3DP"]), "headers": JSON}, targets_owned=False),
    Case("notifier", "POST", "/v1/subscriptions", lambda _: "/v1/subscriptions",
         lambda c: {"json": {"channel": "webhook", "url": f"{c['receiver']}/ok"}}, 201,
         targets_owned=False),
    Case("notifier", "PATCH", "/v1/subscriptions/{subscription_id}",
         lambda c: f"/v1/subscriptions/{c['sub']}",
         lambda _: {"json": {"filter": {"facility_ids": ["acl-lab"]}}}),
    Case("notifier", "POST", "/v1/subscriptions/{subscription_id}/test",
         lambda c: f"/v1/subscriptions/{c['sub']}/test", ok=202),
    Case("notifier", "POST", "/v1/subscriptions/{subscription_id}/rotate-secret",
         lambda c: f"/v1/subscriptions/{c['sub']}/rotate-secret"),
    Case("notifier", "POST", "/v1/subscriptions/{subscription_id}/recover",
         lambda c: f"/v1/subscriptions/{c['sub']}/recover?since=2020-01-01T00:00:00Z",
         ok=202),
    Case("notifier", "POST", "/v1/deliveries/{delivery_id}/retry",
         lambda c: f"/v1/deliveries/{c['failed']}/retry", ok=202),
    # nothing of the owner's is suppressed: the owner's key gets as far as finding that
    # (tests/service/test_email_faults.py lifts a real suppression)
    Case("notifier", "DELETE", "/v1/subscriptions/{subscription_id}/suppression",
         lambda c: f"/v1/subscriptions/{c['sub']}/suppression", ok=404),
    Case("notifier", "DELETE", "/v1/subscriptions/{subscription_id}",
         lambda c: f"/v1/subscriptions/{c['sub']}", ok=204),
]


class Captured(logging.Handler):
    """Every log record of the services in this process, as the services format it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter("any"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def test_the_table_names_every_write_route(registry: InProcess, notifier: InProcess) -> None:
    declared = {(s, m.upper(), path) for s, app in (("registry", registry.app),
                                                    ("notifier", notifier.app))
                for path, operations in app.openapi()["paths"].items() for m in operations
                if m.upper() in WRITES and (m.upper(), path) not in PUBLIC}
    assert declared == {(c.service, c.method, c.route) for c in CASES}


async def test_only_the_owners_key_writes_and_no_secret_is_logged(
        registry: InProcess, notifier: InProcess, store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str], captured: Captured) -> None:
    _, other_key = await store.create_organization("Other Lab")
    _, revoked_key = await store.create_organization("Former Lab")
    assert await store.revoke_key(revoked_key)
    key_id = org[1].split("_")[1]
    callers = {
        "no key": {},
        "malformed key": {"Authorization": "Bearer not-a-key"},
        "revoked key": auth(revoked_key),
        "wrong secret": {"Authorization": f"Bearer mlk_{key_id}_{'A' * 43}"},
        "another organization's key": auth(other_key),
    }
    issued = [org[1], other_key, revoked_key]
    async with httpx.AsyncClient(base_url=registry.url, timeout=10) as reg, \
            httpx.AsyncClient(base_url=notifier.url, timeout=10) as alerts:
        clients = {"registry": reg, "notifier": alerts}
        ctx = await _owned_by(org[1], reg, alerts, receiver[1])
        issued.append(ctx["secret"])
        for case in CASES:
            http = clients[case.service]
            before = await _state(reg, alerts, ctx, org[1])
            for who, headers in callers.items():
                # a create with another organization's key names an id the owner holds:
                # a new id would just be that organization's own new entity
                ctx["new"] = "acl" if who == "another organization's key" else "acl-x"
                response = await _send(http, case, ctx, headers)
                if who == "another organization's key" and not case.targets_owned:
                    assert response.status_code == case.ok, response.text
                    if "secret" in response.json():
                        issued.append(response.json()["secret"])
                    assert await _state(reg, alerts, ctx, org[1]) == before
                    continue
                assert response.status_code in (401, 403, 404, 409), (
                    f"{case.method} {case.route} with {who}: {response.status_code}")
                if who != "another organization's key":
                    assert response.status_code == 401, f"{case.route} with {who}"
                error = response.json()["error"]
                assert set(error) == {"code", "message", "field"}, response.text
                assert await _state(reg, alerts, ctx, org[1]) == before, (
                    f"{case.method} {case.route} with {who} changed something")
            ctx["new"] = "acl-owner"
            response = await _send(http, case, ctx, auth(org[1]))
            assert response.status_code == case.ok, f"{case.route}: {response.text}"
            if "secret" in (body := response.json() if response.content else {}):
                issued.append(body["secret"])
            await _refresh(reg, ctx)
    logged = "\n".join(captured.lines)
    assert captured.lines  # the services did log
    assert_never_logged(issued, logged)


async def _send(http: httpx.AsyncClient, case: Case, ctx: dict[str, Any],
                headers: dict[str, str]) -> httpx.Response:
    options = case.body(ctx)
    options["headers"] = options.get("headers", {}) | headers
    return await http.request(case.method, case.url(ctx), **options)


async def _owned_by(key: str, reg: httpx.AsyncClient, alerts: httpx.AsyncClient,
                    receiver: str) -> dict[str, Any]:
    """A facility, a design, a webhook subscription and a failed delivery of the owner."""
    ctx: dict[str, Any] = {"receiver": receiver, "etags": {}}
    for path, body in (("/v1/facilities?id=acl-lab", facility_doc("ACL Lab", ["FDM"])),
                       ("/v1/designs?id=acl-design", design_doc("ACL design", ["3DP"]))):
        made = await reg.post(path, content=body, headers=auth(key) | JSON)
        assert made.status_code == 201, made.text
    await _refresh(reg, ctx)
    sub = await subscribe(alerts, key, webhook(f"{receiver}/down"))
    ctx["sub"], ctx["secret"] = sub["id"], sub["secret"]
    assert (await alerts.post(f"/v1/subscriptions/{ctx['sub']}/test",
                              headers=auth(key))).status_code == 202

    async def failed() -> str | None:
        listed = await alerts.get(f"/v1/subscriptions/{ctx['sub']}/deliveries",
                                  headers=auth(key))
        done = [d["id"] for d in listed.json()["items"] if d["status"] == "failed"]
        return done[0] if done else None

    ctx["failed"] = await eventually(failed, timeout=20)
    return ctx


async def _refresh(reg: httpx.AsyncClient, ctx: dict[str, Any]) -> None:
    for name, path in (("acl-lab", "/v1/facilities/acl-lab"),
                       ("acl-design", "/v1/designs/acl-design")):
        got = await reg.get(path)
        if got.status_code == 200:
            ctx["etags"][name] = got.headers["ETag"]


async def _state(reg: httpx.AsyncClient, alerts: httpx.AsyncClient, ctx: dict[str, Any],
                 key: str) -> tuple[Any, ...]:
    """What the writes could change: the entities, the subscription, the deliveries."""
    async def body(response: Awaitable[httpx.Response]) -> Any:
        got = await response
        return got.status_code, got.json() if got.content else None

    listed = await body(alerts.get(f"/v1/subscriptions/{ctx['sub']}/deliveries",
                                   headers=auth(key)))
    return (await body(reg.get("/v1/facilities/acl-lab")),
            await body(reg.get("/v1/designs/acl-design")),
            await body(reg.get("/v1/facilities?limit=100")),
            await body(reg.get("/v1/designs?limit=100")),
            await body(alerts.get(f"/v1/subscriptions/{ctx['sub']}", headers=auth(key))),
            [(d["id"], d["status"]) for d in (listed[1] or {}).get("items", [])])


async def test_writes_past_a_keys_limit_get_429_with_retry_after(
        settings: RegistrySettings, store: Store, org: tuple[str, str]) -> None:
    limited = settings.model_copy(update={"write_rate_per_s": 0.5, "write_burst": 3})
    async with InProcessRegistry(limited) as running, httpx.AsyncClient(
            base_url=running.url, timeout=10) as http:
        statuses = []
        for i in range(5):
            answer = await http.post(f"/v1/facilities?id=burst-{i}", headers=auth(org[1]) | JSON,
                                     content=facility_doc(f"Burst {i}", ["FDM"]))
            statuses.append(answer.status_code)
        assert statuses == [201, 201, 201, 429, 429]
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.json()["error"]["code"] == "rate_limited"
        assert (await http.get("/v1/facilities/burst-3")).status_code == 404  # not written
        _, other = await store.create_organization("Another Lab")
        other_write = await http.post("/v1/facilities?id=burst-other", headers=auth(other) | JSON,
                                      content=facility_doc("Other", ["FDM"]))
        assert other_write.status_code == 201  # a limit per key, not for everyone


def test_a_bucket_refills_at_its_rate() -> None:
    from services.common.ratelimit import TokenBuckets

    buckets = TokenBuckets(rate=2.0, burst=2)
    assert [buckets.take("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert buckets.take("k", 0.5) == 0.0  # one token back after 1/rate seconds
    assert buckets.take("other", 0.5) == 0.0
