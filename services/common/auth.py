"""API keys verified before a request's body is read, for every service that takes writes.

A made-up key costs one indexed lookup and never a body read or parse; its key id gets no
bucket of any kind (the write limit counts verified key ids only). Failed verifications
are counted per client address instead: past the limit, 429 before the database is asked.
Verified keys may be remembered for a few seconds, as the hash the database holds (never
the secret), where a later check in the write's own transaction still sees a revocation."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

import asyncpg
from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common import keys
from services.common.errors import ApiError, closing, error_response
from services.common.ratelimit import TokenBuckets, retry_after

CHALLENGE = {"WWW-Authenticate": "Bearer"}

KeyOwner = Callable[[tuple[str, str]], Awaitable[str | None]]
"""(key id, secret) -> the organization of that valid, unrevoked key, else None."""


async def key_owner(pool: asyncpg.Pool, table: str, key: tuple[str, str]) -> str | None:
    """The organization of a valid, unrevoked key in `table` (an api_keys table)."""
    key_id, secret = key
    row = await pool.fetchrow(f"SELECT org_id, secret_hash FROM {table}"
                              " WHERE key_id = $1 AND revoked_at IS NULL", key_id)
    if row is None or not keys.verify(secret, bytes(row["secret_hash"])):
        return None
    return str(row["org_id"])


def required_key(request: Request) -> tuple[str, str]:
    """A well-formed API key (key id, secret), or 401 before the body is read; not yet
    verified: Authenticator.verify checks it against its hash."""
    auth, other = request.headers.get("authorization"), request.headers.get("x-api-key")
    if not auth and not other:
        raise ApiError(401, "unauthorized", "an API key is required", "Authorization",
                       CHALLENGE)
    parsed = keys.from_headers(auth, other)
    if parsed is None:
        raise ApiError(401, "unauthorized", "the API key is not valid", "Authorization",
                       CHALLENGE)
    return parsed


@dataclass(frozen=True)
class VerifiedKey:
    key_id: str
    secret: str
    owner: str

    @property
    def pair(self) -> tuple[str, str]:
        return self.key_id, self.secret


class Authenticator:
    """One process's key checks: `owner_of` asks the database; `cache_s` how long a
    verified key is trusted without asking again (0: never, where no later check would
    see a revocation); `failures_per_min` failed verifications per client address."""

    MAX_CACHED = 10_000  # verified keys remembered at most (oldest dropped first)

    def __init__(self, owner_of: KeyOwner, *, cache_s: float, failures_per_min: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.owner_of, self.cache_s, self.clock = owner_of, cache_s, clock
        self.failures = TokenBuckets(failures_per_min / 60.0, failures_per_min)
        # key id -> (hash of its secret, owner, trusted until)
        self._verified: dict[str, tuple[bytes, str, float]] = {}

    async def verify(self, request: Request) -> VerifiedKey:
        """The request's key, verified; else 401 (or 429 for an address past its failed
        verifications, which slows its next wrong keys, never a valid one). Reads headers
        only: call it before the body."""
        key_id, secret = required_key(request)  # missing or malformed: 401, costs nothing
        now = self.clock()
        cached = self._verified.get(key_id)
        if cached is not None and now < cached[2]:
            if hmac.compare_digest(keys.hash_secret(secret), cached[0]):
                return VerifiedKey(key_id, secret, cached[1])
            # a key id has one secret for ever: another one is wrong, no need to ask
            self._failed(request, now)
        # A key that verifies is never refused: behind one NAT or proxy, one tenant's bad
        # keys must not lock out its neighbours. An address past its failures gets 429
        # instead of 401 for its next wrong keys (one indexed lookup each; the secrets'
        # 256 bits, not this limit, are what makes guessing hopeless).
        owner = await self.owner_of((key_id, secret))
        if owner is None:
            self._failed(request, self.clock())
        if self.cache_s > 0:
            if len(self._verified) >= self.MAX_CACHED:
                self._verified.pop(next(iter(self._verified)))
            self._verified[key_id] = (keys.hash_secret(secret), owner,
                                      self.clock() + self.cache_s)
        return VerifiedKey(key_id, secret, owner)

    def forget(self, key_id: str) -> None:
        """A later check refused this key (revoked meanwhile): stop trusting it here."""
        self._verified.pop(key_id, None)

    def _failed(self, request: Request, now: float) -> NoReturn:
        wait = self.failures.take(_client(request), now)
        if wait > 0:
            raise _too_many(wait)
        raise ApiError(401, "unauthorized", "the API key is not valid", "Authorization",
                       CHALLENGE)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _too_many(wait: float) -> ApiError:
    return ApiError(429, "rate_limited", "too many requests with invalid API keys from this"
                    " address; retry after the time in Retry-After", "Authorization",
                    {"Retry-After": retry_after(wait)})


class KeyBeforeBody:
    """ASGI middleware: a write under `prefix` whose key does not verify is refused before
    its body is read or parsed (FastAPI reads and validates a JSON body before the route
    runs); the connection closes after the refusal. The verified key is left in the
    request's state for the route (`verified(request)`)."""

    def __init__(self, app: ASGIApp, auth: Authenticator, prefix: str) -> None:
        self.app, self.auth, self.prefix = app, auth, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS")
                and scope["path"].startswith(self.prefix)):
            request = Request(scope)
            try:
                key = await self.auth.verify(request)
            except ApiError as exc:
                closing(exc)
                response = error_response(exc.status, exc.code, exc.message, exc.field,
                                          exc.headers)
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})[_VERIFIED] = key
        await self.app(scope, receive, send)


_VERIFIED = "verified_key"


def verified(request: Request) -> VerifiedKey | None:
    """The key KeyBeforeBody verified for this request, if it did."""
    return request.scope.get("state", {}).get(_VERIFIED)


class WriteLimit:
    """The per-key write limit of one service process (services.common.ratelimit); checked
    for verified keys only, so that a made-up key id never gets a bucket."""

    def __init__(self, rate: float, burst: int) -> None:
        self.buckets = TokenBuckets(rate, burst)

    def check(self, key_id: str) -> None:
        wait = self.buckets.take(key_id, time.monotonic())
        if wait > 0:
            raise ApiError(429, "rate_limited", "too many writes with this API key; retry "
                           "after the time in Retry-After", "Authorization",
                           {"Retry-After": retry_after(wait)})
