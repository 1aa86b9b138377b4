"""Subscriptions that come and go during the chaos run: one webhook subscription made
each round (through each notifier in turn, to a receiver that answers 204 as most do),
every other one disabled a round later and enabled again the round after, each through
the other notifier. What must hold at the end: a subscription enabled then gets every
match made after its last creation or enabling returned."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.support.receivers import Receiver
from tests.support.scenario import delivered_events


@dataclass
class Churned:
    id: str
    secret: str
    path: str
    since: datetime | None  # when it was last created or enabled; None while disabled


@dataclass
class Churn:
    http: httpx.AsyncClient
    auth: dict[str, str]
    notifiers: list[str]
    hooks: str  # the receiver's base URL
    subscriptions: list[Churned] = field(default_factory=list)
    calls: int = 0

    async def step(self, round_number: int) -> None:
        path = f"/nocontent/{round_number}"
        made = await self._call("POST", "/v1/subscriptions", {
            "channel": "webhook", "url": f"{self.hooks}{path}"})
        self.subscriptions.append(Churned(made["id"], made["secret"], path, _now()))
        if round_number % 2 == 1:  # the one before goes off...
            await self._enable(self.subscriptions[round_number - 1], False)
        elif round_number >= 2:  # ...and on again a round later
            await self._enable(self.subscriptions[round_number - 2], True)

    async def _enable(self, sub: Churned, enabled: bool) -> None:
        await self._call("PATCH", f"/v1/subscriptions/{sub.id}", {"enabled": enabled})
        sub.since = _now() if enabled else None

    async def _call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Through the notifiers in turn, until one answers (the monkey kills them); a
        create whose answer was lost leaves a subscription nobody checks, no harm."""
        deadline = time.monotonic() + 120
        while True:
            self.calls += 1
            base = self.notifiers[self.calls % len(self.notifiers)]
            try:
                answer = await self.http.request(method, base + path, json=body,
                                                 headers=self.auth)
                if answer.status_code < 300:
                    return answer.json()
                if answer.status_code < 500:
                    raise AssertionError(f"{method} {path}: {answer.text}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path}: no notifier answered for 120 s")
            await asyncio.sleep(0.3)

    def missing(self, receiver: Receiver, published: list[dict[str, Any]]
                ) -> dict[str, tuple[int, int]]:
        """Each subscription enabled now -> (matches made since it was, those of them it
        did not receive), for those that miss any."""
        out = {}
        for sub in self.subscriptions:
            if sub.since is None:
                continue
            owed = {e["event_id"] for e in published if e["_time"] > sub.since}
            got = delivered_events(receiver, sub.secret, sub.path)
            lost = owed - set(got)
            if lost:
                out[sub.id] = (len(owed), len(lost))
        return out


def _now() -> datetime:
    return datetime.now(UTC)
