"""The whole path a maker relies on, through the real registry, matcher and notifier:
an organization registers a facility, a maker subscribes by webhook and by email, a design
the facility can make is posted, and a verified webhook and an email arrive; the facility
closes, and the withdrawal arrives."""

from __future__ import annotations

import re

import httpx
from standardwebhooks import Webhook

from makelocal.trace import trace
from services.matcher.settings import MatcherSettings
from services.notifier.settings import NotifierSettings
from tests.conftest import auth
from tests.support.builders import design_doc, facility_doc
from tests.support.helpers import JSON, InProcess, InProcessMatcher, eventually, wait_ready
from tests.support.receivers import MailServer, Receiver, text_of


async def test_register_subscribe_match_close(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        matcher_settings: MatcherSettings, notifier: InProcess,
        notifier_settings: NotifierSettings, receiver: tuple[Receiver, str],
        mail_server: MailServer) -> None:
    app, base = receiver
    key = auth(org[1])
    async with InProcessMatcher(matcher_settings) as matcher, httpx.AsyncClient(
            base_url=notifier.url, timeout=10) as alerts:
        await wait_ready(matcher.url)
        await wait_ready(notifier.url)
        made = await client.post("/v1/facilities?id=fablab-berlin", headers=key | JSON,
                                 content=facility_doc("Fab Lab Berlin", ["FDM", "laser cutting"],
                                             lat=52.52, lon=13.40, materials=["PLA"]))
        assert made.status_code == 201, made.text
        hook = (await alerts.post("/v1/subscriptions", headers=key, json={
            "channel": "webhook", "url": f"{base}/ok",
            "filter": {"region": {"lat": 52.5, "lon": 13.4, "radius_km": 30},
                       "processes": ["3D printing"]}})).json()
        mail = await alerts.post("/v1/subscriptions", headers=key, json={
            "channel": "email", "address": "maker@example.org",
            "filter": {"facility_ids": ["fablab-berlin"]}})
        assert mail.status_code == 201 and mail.json()["verified"] is False
        await eventually(lambda: _mails(mail_server, 1))
        link = re.search(r"/v1/email/verify\?token=\S+", text_of(mail_server.messages[0]))
        assert link is not None and (await alerts.post(link.group(0))).status_code == 200

        posted = await client.post("/v1/designs?id=phone-stand", headers=key | JSON,
                                   content=design_doc("Phone stand", ["3DP"], "PLA"))
        assert posted.status_code == 201, posted.text
        await eventually(lambda: _webhooks(app, 1), timeout=20)
        found = Webhook(hook["secret"]).verify(app.requests[0].body, app.requests[0].headers)
        [event] = found["data"]["events"]
        assert (event["type"], event["design_id"], event["facility_id"]) == (
            "matches.found", "phone-stand", "fablab-berlin")
        await eventually(lambda: _mails(mail_server, 2), timeout=20)
        assert "can now make design phone-stand" in text_of(mail_server.messages[1])
        await _trace_follows_the_change(event, notifier_settings)

        closed = await client.put("/v1/facilities/fablab-berlin",
                                  headers=key | JSON | {"If-Match": made.headers["ETag"]},
                                  content=facility_doc("Fab Lab Berlin", ["FDM", "laser cutting"],
                                              status="Closed", lat=52.52, lon=13.40,
                                              materials=["PLA"]))
        assert closed.status_code == 200, closed.text
        await eventually(lambda: _webhooks(app, 2), timeout=20)
        withdrawn = Webhook(hook["secret"]).verify(app.requests[1].body, app.requests[1].headers)
        assert withdrawn["data"]["events"][0]["type"] == "matches.withdrawn"
        await eventually(lambda: _mails(mail_server, 3), timeout=20)
        assert "can no longer make design phone-stand" in text_of(mail_server.messages[2])


async def _trace_follows_the_change(event: dict, settings: NotifierSettings) -> None:
    """`makelocal trace` from the design's registry event to its match and deliveries."""
    async def traced() -> str:
        return await trace(settings.database_url, settings.nats_url, event["cause"]["event_id"],
                           registry_schema=settings.notifier_keys_schema,
                           notifier_schema=settings.notifier_db_schema)

    async def delivered() -> bool:
        return (await traced()).count(": delivered, 1 attempts") == 2

    await eventually(delivered, timeout=20)  # the email's delivery record lags the mail
    lines = (await traced()).splitlines()
    assert lines[0].startswith(f"registry change {event['cause']['event_id']}: "
                               "registry.design.") and "phone-stand v1" in lines[0]
    assert lines[1] == "match events: 1"
    assert f"matches.found {event['event_id']} design phone-stand" in lines[2]
    assert sorted(line.split()[0] for line in lines[3:]) == ["email", "webhook"]


async def _webhooks(app: Receiver, n: int) -> bool:
    return len(app.requests) >= n


async def _mails(server: MailServer, n: int) -> bool:
    return len(server.messages) >= n
