"""Token buckets: write limits per verified API key id, failed verifications per client
address. Pure: the clock is passed in.

Per process: N instances behind a load balancer allow up to N times the rate, which is
the point of a limit against a runaway client, not a quota."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class TokenBuckets:
    rate: float  # tokens added per second
    burst: float  # the most a bucket holds
    max_keys: int = 100_000  # past this, full buckets are forgotten first
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str, now: float) -> float:
        """0.0 when one token was taken; else the seconds until one will be there."""
        tokens = self._level(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            self._forget_full(now)
        return 0.0

    def wait(self, key: str, now: float) -> float:
        """What `take` would answer, taking nothing (a key with no bucket has a full one)."""
        tokens = self._level(key, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def _forget_full(self, now: float) -> None:
        # a full bucket and a missing one mean the same: forgetting loses nothing
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[key]


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class InFlight:
    """At most `cap` requests under way per key: a tenant trickling bodies over many
    connections holds its own share of the server, not everyone's."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def enter(self, key: str) -> Iterator[None]:
        if self.counts.get(key, 0) >= self.cap:
            raise InFlightFull(self.cap)
        self.counts[key] = self.counts.get(key, 0) + 1
        try:
            yield
        finally:
            self.counts[key] -= 1
            if not self.counts[key]:
                del self.counts[key]


class InFlightFull(Exception):
    def __init__(self, cap: int) -> None:
        super().__init__(f"{cap} requests of this key are under way")
        self.cap = cap
