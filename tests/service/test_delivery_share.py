"""One organization's slow receivers cannot take every delivery slot: a 2xx that takes
seconds is a success, so the failing lane does not ration it; each organization gets a
share of a process's slots, and another organization's webhook goes out at once."""

from __future__ import annotations

import time
from typing import Any

from services.notifier.shares import Shares
from tests.support.builders import subscribe, webhook
from tests.support.helpers import eventually, notifier_api, publish_matches
from tests.support.receivers import Receiver


def test_shares_count_room_per_owner() -> None:
    shares = Shares(per_owner=2)
    for owner in ("a", "a", "b"):
        shares.started(owner)
    assert shares.room() == (["a", "b"], [0, 1], 2)
    shares.claiming = 1  # a claim under way may start one of anyone's
    assert shares.room() == (["a", "b"], [0, 0], 1)
    shares.claiming = 0
    shares.ended("a")
    shares.ended("b")
    assert shares.room() == (["a"], [1], 2)


async def test_a_slow_tenant_leaves_room_for_others(
        notifier_settings: Any, store: Any, org: tuple[str, str],
        receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    app.release.clear()
    other = await store.create_organization("Quick Lab")
    settings = notifier_settings.model_copy(update={
        "notifier_concurrency": 8, "notifier_slots_per_org": 4, "notifier_timeout_s": 20.0})
    async with notifier_api(settings) as http:
        # the slow tenant: 12 subscriptions whose receiver holds every call (a 200 that
        # comes only when released)
        for _ in range(12):
            await subscribe(http, org[1], webhook(f"{base}/held", facility_ids=["fab-slow"]))
        await subscribe(http, other[1], webhook(f"{base}/ok", facility_ids=["fab-quick"]))
        try:
            await publish_matches(settings.nats_url, [("d-slow", "fab-slow")])

            async def held(n: int) -> bool:
                return len(app.at("/held")) >= n

            # as many held as its share allows, and no more
            await eventually(lambda: held(4), timeout=10)
            await publish_matches(settings.nats_url, [("d-quick", "fab-quick")])
            started = time.monotonic()

            async def quick_arrived() -> bool:
                return bool(app.at("/ok"))

            await eventually(quick_arrived, timeout=10)
            assert time.monotonic() - started < 3.0
            assert len(app.at("/held")) == 4  # the slow tenant still has only its share
        finally:
            app.release.set()
        await eventually(lambda: held(12), timeout=20)
