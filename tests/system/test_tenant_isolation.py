"""One tenant's hostile writes do not hold up another's alerts: while one organization
posts documents whose events would not fit a NATS message, YAML bombs, deep nesting, and
bodies under made-up keys, another organization's new designs reach its webhook within
2 s of their acknowledgement, each of them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx

from services.matcher.settings import MatcherSettings
from tests.conftest import auth
from tests.support.builders import design_doc, facility_doc, subscribe, webhook
from tests.support.helpers import JSON, InProcess, InProcessMatcher, eventually, wait_ready
from tests.support.hostile import BOMB, DEEP, MADE_UP_KEY, TOML, YAML, huge_design
from tests.support.receivers import Receiver


async def test_a_hostile_tenant_does_not_delay_anothers_alerts(
        client: httpx.AsyncClient, store: Any, registry: InProcess,
        matcher_settings: MatcherSettings, notifier: InProcess,
        receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    quiet = await store.create_organization("Quiet Lab")
    hostile = await store.create_organization("Hostile Lab")
    huge = huge_design()
    async with InProcessMatcher(matcher_settings) as matcher, httpx.AsyncClient(
            base_url=notifier.url, timeout=10) as alerts, httpx.AsyncClient(
            base_url=registry.url, timeout=30) as attacker:
        await wait_ready(matcher.url)
        await wait_ready(notifier.url)
        made = await client.post("/v1/facilities?id=quiet-lab", headers=auth(quiet[1]) | JSON,
                                 content=facility_doc("Quiet Lab", ["FDM"], materials=["PLA"]))
        assert made.status_code == 201, made.text
        await subscribe(alerts, quiet[1], webhook(f"{base}/quiet", facility_ids=["quiet-lab"]))

        refusals: list[int] = []

        async def attack() -> None:
            n = 0
            while True:
                n += 1
                for body, headers in ((huge, auth(hostile[1]) | TOML),
                                      (BOMB, auth(hostile[1]) | YAML),
                                      (DEEP, auth(hostile[1]) | YAML),
                                      (huge, MADE_UP_KEY | TOML)):
                    answer = await attacker.post(f"/v1/designs?id=hostile-{n}",
                                                 content=body, headers=headers)
                    refusals.append(answer.status_code)

        attacking = [asyncio.create_task(attack()) for _ in range(3)]
        acknowledged: dict[str, float] = {}
        try:
            await asyncio.sleep(0.5)  # the attack under way
            for i in range(15):
                design = f"quiet-{i}"
                posted = await client.post(f"/v1/designs?id={design}",
                                           headers=auth(quiet[1]) | JSON,
                                           content=design_doc(f"Quiet {i}", ["3DP"], "PLA"))
                assert posted.status_code == 201, posted.text
                acknowledged[design] = time.monotonic()
                await asyncio.sleep(0.2)

            async def all_arrived() -> bool:
                return len(_arrivals(app)) >= len(acknowledged)

            await eventually(all_arrived, timeout=20)
        finally:
            for task in attacking:
                task.cancel()
            for task in attacking:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    arrived = _arrivals(app)
    late = {d: round(arrived[d] - t, 2) for d, t in acknowledged.items()
            if arrived[d] - t > 2.0}
    assert not late, f"later than 2 s: {late}"
    assert refusals and all(400 <= s < 500 for s in refusals), set(refusals)
    assert 413 in refusals and 401 in refusals


def _arrivals(app: Receiver) -> dict[str, float]:
    """Design id -> when its match first reached the quiet lab's webhook."""
    out: dict[str, float] = {}
    for request in app.at("/quiet"):
        for event in request.json["data"]["events"]:
            out.setdefault(event["design_id"], request.at)
    return out
