"""The notifier as real processes, killed with SIGKILL mid-delivery, and two of them
sharing the work: every delivery arrives, with one webhook-id, and none is sent twice
by two processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

from services.notifier.settings import NotifierSettings
from services.registry.store import Store
from tests.conftest import auth
from tests.support.builders import subscribe
from tests.support.helpers import ServiceProcess, eventually, publish_matches, wait_ready
from tests.support.receivers import Receiver


async def _subscribe(url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """Through whichever notifier process listens at `url`."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return await subscribe(http, key, body)


async def test_killed_after_sending_before_recording_delivers_again_with_the_same_id(
        notifier_env: dict[str, str], notifier_settings: NotifierSettings, store: Store,
        org: tuple[str, str], receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    app, base = receiver
    first = ServiceProcess(notifier_env, tmp_path / "a.log", "notifier").start(
        wait=False, MAKELOCAL_CRASH_AT="notifier.after_send")
    try:
        await first.listening()
        await wait_ready(first.url)
        sub = await _subscribe(first.url, org[1], {"channel": "webhook", "url": f"{base}/ok"})
        await publish_matches(notifier_settings.nats_url, [("d1", "f1")])
        assert await first.wait_dead() == -9  # SIGKILL right after the POST went out
        assert len(app.at("/ok")) == 1
    finally:
        first.kill()
    second = ServiceProcess(notifier_env, tmp_path / "b.log", "notifier").start(wait=False)
    try:
        await second.listening()
        await eventually(lambda: _received(app, 2), timeout=20)
        sent = app.at("/ok")
        assert sent[0].webhook_id == sent[1].webhook_id
        for request in sent:
            Webhook(sub["secret"]).verify(request.body, request.headers)
        async with httpx.AsyncClient(base_url=second.url, timeout=10) as http:
            async def delivered() -> list[dict[str, Any]]:
                items = (await http.get(f"/v1/subscriptions/{sub['id']}/deliveries",
                                        headers=auth(org[1]))).json()["items"]
                return items if items and items[0]["status"] == "delivered" else []

            [delivery] = await eventually(delivered)
            assert delivery["attempts"] == 2 and delivery["webhook_id"] == sent[0].webhook_id
    finally:
        second.stop()


async def _received(app: Receiver, n: int) -> bool:
    return len(app.requests) >= n


async def test_two_processes_share_the_work_without_sending_anything_twice(
        notifier_env: dict[str, str], notifier_settings: NotifierSettings, store: Store,
        org: tuple[str, str], receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    app, base = receiver
    # two attempts at a time each, so that both must take part
    procs = [ServiceProcess(notifier_env | {"MAKELOCAL_NOTIFIER_CONCURRENCY": "2"},
                            tmp_path / f"{n}.log", "notifier").start(wait=False)
             for n in ("a", "b")]
    try:
        for proc in procs:
            await proc.listening()
            await wait_ready(proc.url)
        subs = [await _subscribe(procs[i % 2].url, org[1], {
            "channel": "webhook", "url": f"{base}/ok/{i}", "filter": {"facility_ids": [f"f{i}"]}})
            for i in range(20)]
        pairs = [(f"d{j}", f"f{i}") for i in range(20) for j in range(30)]
        await publish_matches(notifier_settings.nats_url, pairs)
        await eventually(lambda: app.has_events(None, len(pairs)), timeout=40, interval=0.2)
        ids = [r.webhook_id for r in app.requests]
        assert len(ids) == len(set(ids)), "a delivery was sent twice"
        events = [e["event_id"] for r in app.requests for e in r.json["data"]["events"]]
        assert len(events) == len(set(events)) == len(pairs)
        assert len(subs) == 20
        for proc in procs:
            async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
                text = (await http.get("/metrics")).text
            assert 'makelocal_notifier_deliveries_total{channel="webhook",result="delivered"}' \
                in text, "one process did all the work"
    finally:
        for proc in procs:
            proc.stop()


