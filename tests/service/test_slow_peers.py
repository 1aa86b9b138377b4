"""Slow and faulty peers do not slow healthy subscribers. Half the subscriptions point at
receivers that hang, trickle a byte a second, answer 100 MB or reset the connection, and
at an SMTP server that stops answering; with fewer delivery slots than bad peers, healthy
webhooks keep the latency they had without them."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from tests.conftest import auth
from tests.support.builders import email_subscription, subscribe, webhook
from tests.support.helpers import InProcess, eventually, publish_matches, wait_ready
from tests.support.receivers import BadPeers, Receiver

HEALTHY = 13
BAD = ["/hang"] * 4 + ["/trickle"] * 4 + ["/huge"] * 2 + ["/reset"] * 2
WAVES = 6


@pytest_asyncio.fixture(loop_scope="session")
async def bad_peers() -> AsyncIterator[tuple[BadPeers, str]]:
    peers = BadPeers()
    base = await peers.start()
    yield peers, base
    await peers.stop()


async def _wave(nats_url: str, app: Receiver, tag: str) -> list[float]:
    """One match for every healthy subscription; each one's publish-to-arrival time."""
    designs = [f"{tag}-{i}" for i in range(HEALTHY)]
    sent = time.monotonic()
    await publish_matches(nats_url, [(d, f"ok-{i}") for i, d in enumerate(designs)])
    arrived: dict[str, float] = {}

    async def all_arrived() -> bool:
        for request in app.at("/ok"):
            for event in request.json["data"]["events"]:
                arrived.setdefault(event["design_id"], request.at)
        return all(d in arrived for d in designs)

    await eventually(all_arrived, timeout=20, interval=0.01)
    return [arrived[d] - sent for d in designs]


async def test_bad_peers_do_not_slow_healthy_deliveries(
        notifier_settings: Any, store: Any, org: tuple[str, str],
        receiver: tuple[Receiver, str], bad_peers: tuple[BadPeers, str]) -> None:
    from services.notifier.app import create_app

    app, base = receiver
    peers, bad_base = bad_peers
    # 8 slots for 13 bad peers; a 2 s timeout; bad peers retried all the time
    settings = notifier_settings.model_copy(update={
        "notifier_concurrency": 8, "notifier_timeout_s": 2.0, "smtp_timeout_s": 2.0,
        "notifier_retry_schedule": ",".join(["0.2"] * 50)})
    async with InProcess(create_app(settings), settings) as notifier, httpx.AsyncClient(
            base_url=notifier.url, timeout=20) as http:
        await wait_ready(notifier.url)
        for i in range(HEALTHY):
            await subscribe(http, org[1], webhook(f"{base}/ok", facility_ids=[f"ok-{i}"]))
        for i, path in enumerate(BAD):
            await subscribe(http, org[1],
                            webhook(f"{bad_base}{path}", facility_ids=[f"bad-{i}"]))
        before: list[float] = []
        for wave in range(WAVES):
            before += await _wave(settings.nats_url, app, f"before-{wave}")

        # the bad peers start failing (and the stalling SMTP server gets its verification)
        await publish_matches(settings.nats_url, [(f"b-{i}", f"bad-{i}")
                                                  for i in range(len(BAD))])
        await email_subscription(http, org[1], "stall@example.org")
        await eventually(lambda: _all_tried(peers), timeout=20)
        await asyncio.sleep(2.5)  # every bad subscription has failed once: retried now

        during: list[float] = []
        for wave in range(WAVES):
            during += await _wave(settings.nats_url, app, f"during-{wave}")
        p95 = {name: statistics.quantiles(v, n=20)[18] for name, v in
               (("before", before), ("during", during))}
        print(f"healthy webhook latency p95 before {p95['before'] * 1000:.0f} ms,"
              f" with bad peers {p95['during'] * 1000:.0f} ms")
        # a healthy delivery that waited for a hung peer's slot would wait up to 2 s
        assert p95["during"] <= p95["before"] + 0.5 and max(during) < 1.5, p95
        # the bad peers were being retried meanwhile: they had the slots they may have
        assert peers.requests["/hang"] + peers.requests["/trickle"] > 8
        # the 100 MB answer was cut at what the attempt log keeps
        huge = await _attempts(http, org[1], f"{bad_base}/huge")
        assert huge and all(len(a["response_body"] or "") <= 4096 for a in huge)


async def _all_tried(peers: BadPeers) -> bool:
    return all(peers.requests[path] > 0 for path in set(BAD))


async def _attempts(http: httpx.AsyncClient, key: str, url: str) -> list[dict[str, Any]]:
    subs = (await http.get("/v1/subscriptions", headers=auth(key))).json()["items"]
    out = []
    for sub in subs:
        if sub.get("url") == url:
            items = (await http.get(f"/v1/subscriptions/{sub['id']}/deliveries",
                                    headers=auth(key))).json()["items"]
            out += [a for d in items for a in d["attempts_log"]]
    return out
