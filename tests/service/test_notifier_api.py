"""The subscriptions API: who may do what, bad input refused with a clear error and no
change, secrets shown once, rotation, test events, and disabling a failing endpoint."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from services.notifier.settings import NotifierSettings
from services.registry.store import Store
from tests.conftest import auth
from tests.support.helpers import (
    JSON,
    InProcess,
    confirm,
    eventually,
    has_mail,
    publish_matches,
    wait_ready,
)
from tests.support.receivers import MailServer, Receiver


def _error(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        assert error["field"] == field, error
    return error


async def test_access_control(notifier: InProcess, org: tuple[str, str], store: Store,
                              receiver: tuple[Receiver, str]) -> None:
    _, base = receiver
    other = await store.create_organization("Other Lab")
    revoked = await store.create_organization("Gone Lab")
    await store.revoke_key(revoked[1])
    body = {"channel": "webhook", "url": f"{base}/ok"}
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        await wait_ready(notifier.url)
        for headers in ({}, {"Authorization": "Bearer nonsense"}, auth(revoked[1]),
                        auth(org[1][:-2] + "xx")):
            _error(await http.post("/v1/subscriptions", json=body, headers=headers), 401,
                   "Authorization")
        mine = await http.post("/v1/subscriptions", json=body, headers=auth(org[1]))
        assert mine.status_code == 201
        sub = mine.json()["id"]
        for method, path in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/test"),
                             ("POST", "/rotate-secret"), ("GET", "/deliveries")):
            response = await http.request(method, f"/v1/subscriptions/{sub}{path}",
                                          headers=auth(other[1]),
                                          json={} if method == "PATCH" else None)
            _error(response, 404)
        listed = (await http.get("/v1/subscriptions", headers=auth(other[1]))).json()
        assert listed["items"] == []
        assert (await http.get(f"/v1/subscriptions/{sub}", headers=auth(org[1]))
                ).status_code == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"channel": "webhook", "url": "http://10.0.0.1/hook"}, "url"),
    ({"channel": "webhook", "url": "http://169.254.169.254/latest/meta-data"}, "url"),
    ({"channel": "webhook", "url": "http://[::ffff:a9fe:a9fe]/"}, "url"),
    ({"channel": "webhook", "url": "http://0xa9fea9fe/"}, "url"),
    ({"channel": "webhook", "url": "http://no-such-host.invalid/"}, "url"),
    ({"channel": "webhook", "url": "ftp://example.org/"}, "url"),
    ({"channel": "webhook", "url": "http://u:p@127.0.0.1/"}, "url"),
    ({"channel": "email", "address": "not-an-address"}, "address"),
    ({"channel": "pigeon", "url": "http://127.0.0.1/"}, None),
    ({"channel": "webhook", "url": "http://127.0.0.1/", "filter": {"processes": ["magic"]}},
     "filter.processes"),
    ({"channel": "webhook", "url": "http://127.0.0.1/",
      "filter": {"region": {"lat": 95, "lon": 0, "radius_km": 5}}}, "filter.region.lat"),
    ({"channel": "webhook", "url": "http://127.0.0.1/", "filter": {"event_types": []}},
     "filter.event_types"),
    ({"channel": "webhook", "url": "http://127.0.0.1/", "surprise": 1}, None),
    ({"channel": "webhook", "url": "http://127.0.0.1/a\u0000b"}, "url"),
    ({"channel": "webhook", "url": "http://127.0.0.1/a\ud800b"}, "url"),
    ({"channel": "email", "address": "a\u0000b@example.org"}, "address"),
    ({"channel": "webhook", "url": "http://127.0.0.1/",
      "filter": {"facility_ids": ["a\u0000"]}}, "filter.facility_ids.0"),
])
async def test_bad_subscriptions_are_refused_and_change_nothing(
        notifier: InProcess, org: tuple[str, str], body: dict[str, Any],
        field: str | None) -> None:
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        # json.dumps escapes what UTF-8 cannot carry (an unpaired surrogate) as JSON does
        error = _error(await http.post("/v1/subscriptions", content=json.dumps(body),
                                       headers=auth(org[1]) | JSON), 422)
        if field is not None:
            assert error["field"] == field, error
        assert (await http.get("/v1/subscriptions", headers=auth(org[1]))).json()["items"] == []


async def test_rotation_test_event_patch_delete(notifier: InProcess, org: tuple[str, str],
                                                receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        await wait_ready(notifier.url)
        created = (await http.post("/v1/subscriptions", headers=auth(org[1]), json={
            "channel": "webhook", "url": f"{base}/ok"})).json()
        sub, old = created["id"], created["secret"]
        stored = await notifier.app.state.store.pool.fetchval(
            "SELECT secret FROM subscriptions WHERE id = $1", sub)
        assert stored.startswith("v2:") and old.removeprefix("whsec_") not in stored
        rotated = await http.post(f"/v1/subscriptions/{sub}/rotate-secret", headers=auth(org[1]))
        new = rotated.json()["secret"]
        assert new != old and rotated.json()["previous_secret_valid_until"]
        assert (await http.post(f"/v1/subscriptions/{sub}/test", headers=auth(org[1]))
                ).status_code == 202
        await eventually(lambda: _got(app, 1))
        request = app.requests[0]
        for secret in (old, new):  # both sign during the overlap
            assert Webhook(secret).verify(request.body, request.headers)["type"] == "test"
        # PATCH: a private URL is refused and the old one kept
        _error(await http.patch(f"/v1/subscriptions/{sub}", headers=auth(org[1]),
                                json={"url": "http://192.168.0.1/"}), 422, "url")
        _error(await http.patch(f"/v1/subscriptions/{sub}", headers=auth(org[1]),
                                json={"digest": "daily"}), 422, "digest")
        patched = await http.patch(f"/v1/subscriptions/{sub}", headers=auth(org[1]),
                                   json={"filter": {"design_ids": ["d9"]}})
        assert patched.json()["url"] == f"{base}/ok"
        assert patched.json()["filter"]["design_ids"] == ["d9"]
        assert (await http.delete(f"/v1/subscriptions/{sub}", headers=auth(org[1]))
                ).status_code == 204
        _error(await http.get(f"/v1/subscriptions/{sub}", headers=auth(org[1])), 404)
        _error(await http.post("/v1/deliveries/not-a-uuid/retry", headers=auth(org[1])), 404)


async def _got(app: Receiver, n: int) -> bool:
    return len(app.requests) >= n


async def test_an_endpoint_failing_too_long_is_disabled_and_its_owner_told(
        notifier_settings: NotifierSettings, store: Store, org: tuple[str, str],
        receiver: tuple[Receiver, str], mail_server: MailServer) -> None:
    from services.notifier.app import create_app

    app, base = receiver
    settings = notifier_settings.model_copy(update={
        "notifier_disable_after_s": 0.5, "notifier_retry_schedule": "0.4,0.4,0.4,0.4"})
    async with InProcess(create_app(settings), settings) as notifier, httpx.AsyncClient(
            base_url=notifier.url, timeout=10) as http:
        await wait_ready(notifier.url)
        # notices go to a confirmed address only: the owner's alerts confirmed it
        assert (await http.post("/v1/subscriptions", headers=auth(org[1]), json={
            "channel": "email", "address": "owner@example.org",
            "filter": {"facility_ids": ["none"]}})).status_code == 201
        await confirm(http, mail_server, "owner@example.org")
        sub = (await http.post("/v1/subscriptions", headers=auth(org[1]), json={
            "channel": "webhook", "url": f"{base}/down",
            "contact_email": "owner@example.org"})).json()
        await publish_matches(settings.nats_url, [("d1", "f1")])

        async def disabled() -> dict[str, Any] | None:
            got = (await http.get(f"/v1/subscriptions/{sub['id']}", headers=auth(org[1]))).json()
            return got if not got["enabled"] else None

        got = await eventually(disabled, timeout=20)
        assert got["disabled_reason"].startswith("failing without a success")
        await eventually(lambda: has_mail(mail_server, "owner@example.org", 2))
        assert sub["id"] in mail_server.to("owner@example.org")[1].get_payload()[0].get_payload()
        calls = len(app.at("/down"))
        assert 2 <= calls <= 3
        # re-enabled by its owner
        again = await http.patch(f"/v1/subscriptions/{sub['id']}", headers=auth(org[1]),
                                 json={"enabled": True})
        assert again.json()["enabled"] is True and again.json()["disabled_reason"] is None
