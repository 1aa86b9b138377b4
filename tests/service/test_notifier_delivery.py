"""Webhook delivery against real receivers on loopback: signed, batched, retried on the
schedule, 410 and 3xx and 429 handled, every attempt logged, failures replayable."""

from __future__ import annotations

from typing import Any

import httpx
from standardwebhooks import Webhook

from tests.conftest import auth
from tests.support.builders import deliveries, subscribe
from tests.support.helpers import InProcess, consumed, eventually, publish_matches, wait_ready
from tests.support.receivers import Receiver


def verified_events(secret: str, received: list) -> list[dict[str, Any]]:
    """Every captured request verified with the standardwebhooks package; their events."""
    events = []
    for request in received:
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["type"] == "matches"
        assert len(payload["data"]["events"]) <= 100
        events.extend(payload["data"]["events"])
    return events


async def test_signed_batched_delivery(notifier_settings: Any, store: Any,
                                       org: tuple[str, str],
                                       receiver: tuple[Receiver, str]) -> None:
    from services.notifier.app import create_app

    app, base = receiver
    # The receiver holds its calls until all 250 matches are consumed, so the batches
    # depend on the rules alone, not on how fast a loaded machine consumes: the first
    # `in_flight` calls take what was there, full batches leave at once, the rest when
    # the held ones are done. Neither the maximum wait nor the call's timeout may fire
    # during the hold.
    settings = notifier_settings.model_copy(update={"notifier_batch_max_wait_s": 60.0,
                                                    "notifier_timeout_s": 30.0})
    async with InProcess(create_app(settings), settings) as notifier, httpx.AsyncClient(
            base_url=notifier.url, timeout=10) as http:
        await wait_ready(notifier.url)
        sub = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/held",
                                             "filter": {"facility_ids": ["fab-1"]}})
        assert sub["secret"].startswith("whsec_")
        shown = (await http.get(f"/v1/subscriptions/{sub['id']}", headers=auth(org[1]))).json()
        assert "secret" not in shown and sub["secret"] not in str(shown)
        pairs = [(f"design-{i}", "fab-1") for i in range(250)] + [("design-x", "fab-2")]
        ids = await publish_matches(settings.nats_url, pairs)
        await eventually(lambda: consumed(http, len(pairs)), timeout=20)
        app.release.set()
        await eventually(lambda: app.has_events("/held", 250), timeout=20)
        calls = app.at("/held")
        events = verified_events(sub["secret"], calls)
        assert sorted(e["event_id"] for e in events) == sorted(ids[:250])
        sizes = [len(r.json["data"]["events"]) for r in calls]
        # 250 matches: a partial batch leaves only while fewer than `in_flight` are held
        # (each adds one), and once after the release; the rest go as full batches
        early = settings.notifier_batch_in_flight
        partial = sum(1 for size in sizes if size < 100)
        assert partial <= early + 1 and len(calls) <= early + 3, sizes
        assert len({r.webhook_id for r in calls}) == len(calls)

        async def all_delivered() -> list[dict[str, Any]]:
            logged = await deliveries(http, org[1], sub["id"])
            return logged if all(d["status"] == "delivered" for d in logged) else []

        logged = await eventually(all_delivered)
        assert sum(d["item_count"] for d in logged) == 250
        assert all(d["attempts_log"][0]["status_code"] == 200 for d in logged)
        # a replayed event (same id) is not delivered again
        await publish_matches(settings.nats_url, pairs[:5], msg_id=False)
        await eventually(lambda: consumed(http, len(pairs) + 5))
        assert sum(d["item_count"] for d in await deliveries(http, org[1], sub["id"])) == 250


async def test_retries_timeouts_gone_redirects_and_retry_after(
        notifier: InProcess, org: tuple[str, str], receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        subs = {}
        for name, path in (("flaky", "/flaky/2"), ("slow", "/slow"), ("gone", "/gone"),
                           ("redirect", "/redirect"), ("limited", "/limited/1")):
            subs[name] = await subscribe(http, org[1], {
                "channel": "webhook", "url": f"{base}{path}",
                "filter": {"facility_ids": [f"fab-{name}"]}})
        await publish_matches(notifier.settings.nats_url,
                              [("d1", f"fab-{name}") for name in subs])

        async def settled() -> bool:
            for name in ("flaky", "limited"):
                if [d["status"] for d in await deliveries(http, org[1], subs[name]["id"])] \
                        != ["delivered"]:
                    return False
            for name in ("slow", "redirect", "gone"):
                if [d["status"] for d in await deliveries(http, org[1], subs[name]["id"])] \
                        != ["failed"]:
                    return False
            return True

        await eventually(settled, timeout=30, interval=0.2)
        for name, sub in subs.items():  # every attempt of every delivery is signed
            sent = [r for r in app.requests if r.path == sub["url"].removeprefix(base)]
            assert sent and len(verified_events(sub["secret"], sent)) == len(sent), name
        # flaky: two 500s then 200, one webhook-id throughout
        flaky = app.at("/flaky/2")
        assert len(flaky) == 3 and len({r.webhook_id for r in flaky}) == 1
        log = (await deliveries(http, org[1], subs["flaky"]["id"]))[0]["attempts_log"]
        assert [a["status_code"] for a in log] == [500, 500, 200]
        # slow: every attempt timed out (status 0), then the delivery failed
        log = (await deliveries(http, org[1], subs["slow"]["id"]))[0]["attempts_log"]
        assert [a["status_code"] for a in log] == [0, 0, 0, 0]
        assert all("timed out" in a["error"] for a in log)
        # redirect: 302 is a failure and is never followed
        log = (await deliveries(http, org[1], subs["redirect"]["id"]))[0]["attempts_log"]
        assert [a["status_code"] for a in log] == [302] * 4
        assert not app.at("/ok")
        # gone: one attempt, the subscription disabled
        assert len(app.at("/gone")) == 1
        gone = (await http.get(f"/v1/subscriptions/{subs['gone']['id']}",
                               headers=auth(org[1]))).json()
        assert gone["enabled"] is False and "410" in gone["disabled_reason"]
        # limited: 429 with Retry-After 1 s where the schedule says 0.3 s: honoured up to
        # twice the scheduled delay, 0.6 s
        limited = app.at("/limited/1")
        assert len(limited) == 2
        assert 0.55 <= limited[1].at - limited[0].at < 0.95
        metrics = (await http.get("/metrics")).text
        assert 'makelocal_notifier_deliveries_total{channel="webhook",result="failed"}' in metrics
        for name in ("attempt_duration_seconds_bucket", "end_to_end_seconds_bucket",
                     "oldest_pending_age_seconds", "subscriptions_disabled",
                     "ssrf_blocked_total", "deliveries_dead", "consumer_pending"):
            assert f"makelocal_notifier_{name}" in metrics, name


async def test_failed_delivery_is_replayed_with_the_same_webhook_id(
        notifier: InProcess, org: tuple[str, str], receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        sub = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/flaky/4"})
        await publish_matches(notifier.settings.nats_url, [("d1", "f1")])

        async def status() -> str | None:
            found = await deliveries(http, org[1], sub["id"])
            return found[0]["status"] if found and found[0]["status"] != "pending" else None

        assert await eventually(status, timeout=20) == "failed"
        failed = (await deliveries(http, org[1], sub["id"]))[0]
        # another organization's key cannot replay it
        response = await http.post(f"/v1/deliveries/{failed['id']}/retry",
                                   headers=auth(org[1][:-1] + ("A" if org[1][-1] != "A"
                                                               else "B")))
        assert response.status_code == 401
        response = await http.post(f"/v1/deliveries/{failed['id']}/retry", headers=auth(org[1]))
        assert response.status_code == 202, response.text
        assert await eventually(status, timeout=20) == "delivered"
        ids = {r.webhook_id for r in app.at("/flaky/4")}
        assert ids == {failed["webhook_id"]} and len(app.at("/flaky/4")) == 5
        # recover: everything failed since a time goes out again
        sub2 = await subscribe(http, org[1], {"channel": "webhook", "url": f"{base}/down",
                                              "filter": {"design_ids": ["d2"]}})
        await publish_matches(notifier.settings.nats_url, [("d2", "f1")])

        async def failed2() -> bool:
            found = await deliveries(http, org[1], sub2["id"])
            return bool(found) and found[0]["status"] == "failed"

        await eventually(failed2, timeout=20)
        response = await http.post(f"/v1/subscriptions/{sub2['id']}/recover",
                                   params={"since": "2020-01-01T00:00:00Z"}, headers=auth(org[1]))
        assert response.status_code == 202 and len(response.json()["requeued"]) == 1
