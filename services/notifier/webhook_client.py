"""The HTTP client webhooks go out with: aiohttp (its C parser does RFC 9112 framing: 1xx
interim answers, 204 and 304 without a body, chunked, close-delimited, keep-alive), with
the guard in place of DNS.

What it keeps from the guard: a new connection goes only to addresses the guard checked
for that name (the connector asks the guard, not DNS, so there is no second lookup); an IP
literal is checked before the request, since the connector does not look those up;
redirects are not followed; no proxy is taken from the environment; TLS is verified
against the host name (SNI); an answer is read up to a bound."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from services.notifier.addresses import Refused, normalised_url
from services.notifier.guard import Guard

DRAIN_LIMIT = 64 * 1024  # a longer unread rest closes the connection instead
# Below the keep-alive of the servers people run (uvicorn 5 s, nginx 75 s): fewer sends
# on a connection the server is closing at that very moment.
KEEPALIVE_S = 4.0
PARSE_ERROR_POLL_S = 0.2


class AddressRefused(OSError):
    """The guard refused every address of a name (an OSError, as the connector expects
    of a failed lookup; it keeps the reason)."""


@dataclass(frozen=True)
class Response:
    status: int
    retry_after: str | None
    body: bytes  # at most `keep` bytes


class _GuardResolver(AbstractResolver):
    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
        try:
            addresses = await self.guard.addresses(host, port)
        except Refused as exc:
            raise AddressRefused(str(exc)) from None
        return [{"hostname": host, "host": str(ip), "port": port,
                 "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}
                for ip in addresses
                if family in (socket.AF_UNSPEC, socket.AF_INET6 if ip.version == 6
                              else socket.AF_INET)]

    async def close(self) -> None:
        pass


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The system's trusted CAs, and the operator's own (a private CA) when given."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    return context


class WebhookClient:
    """One per process: pooled keep-alive connections per host, made in the running
    loop on first use."""

    def __init__(self, guard: Guard, tls: ssl.SSLContext | None = None) -> None:
        self.guard, self.tls = guard, tls or tls_context()
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=_GuardResolver(self.guard), use_dns_cache=False, ssl=self.tls,
                limit=0,  # the dispatcher's slots bound the connections in use
                keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(None))
        return self._session

    async def post(self, url: str, headers: dict[str, str], body: bytes,
                   keep: int = 4096) -> Response:
        """The answer, its body cut at `keep` bytes. Raises Refused (the guard's
        reason), aiohttp.ClientError or OSError; the caller bounds the time."""
        await self.guard.connectable(url)
        # sent as stored (normalised_url): yarl would re-quote it its own way otherwise
        wire = URL(normalised_url(url), encoded=True)
        headers = headers | {"user-agent": "makelocal-notifier", "accept-encoding": "identity"}
        retried = False
        while True:
            answered = False
            try:
                async with self._client().post(wire, data=body, headers=headers,
                                               allow_redirects=False) as answer:
                    answered = True
                    return Response(answer.status, answer.headers.get("retry-after"),
                                    await _read(answer, keep))
            except aiohttp.ClientConnectorError as exc:  # (a ClientOSError: first)
                if isinstance(exc.os_error, AddressRefused):
                    raise Refused(str(exc.os_error)) from None
                raise
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # Closed or reset before any answer: most often a kept-alive connection
                # the server timed out as we sent (a close with our request unread is a
                # reset). Sent again once; receivers dedupe by webhook-id.
                if retried or answered or not _closed_unanswered(exc):
                    raise
                retried = True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _closed_unanswered(exc: Exception) -> bool:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return getattr(exc, "errno", None) in (errno.ECONNRESET, errno.EPIPE)


async def _read(answer: aiohttp.ClientResponse, keep: int) -> bytes:
    """The first `keep` bytes; the rest is read (so the connection can serve again) up
    to DRAIN_LIMIT, past which the connection is closed instead."""
    body = bytearray()
    while len(body) < keep:
        chunk = await _chunk(answer, keep - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
    drained = 0
    while drained <= DRAIN_LIMIT:
        chunk = await _chunk(answer, DRAIN_LIMIT)
        if not chunk:
            return bytes(body)
        drained += len(chunk)
    answer.close()
    return bytes(body)


async def _chunk(answer: aiohttp.ClientResponse, n: int) -> bytes:
    """Up to n bytes of the body. aiohttp (3.14) keeps a parse error met after the head
    (a bad chunk size) on the connection's protocol, and the body's reader waits on: it
    is looked for while waiting, and the read fails at once instead of at the timeout."""
    while True:
        try:
            async with asyncio.timeout(PARSE_ERROR_POLL_S):
                return await answer.content.read(n)
        except TimeoutError:
            connection = answer.connection
            protocol = connection.protocol if connection is not None else None
            if protocol is None or protocol.exception() is not None:
                raise aiohttp.ClientPayloadError("malformed body") from None


def describe(exc: BaseException) -> str:
    """An error in our own words: aiohttp's texts can hold the URL, whose query may be
    the receiver's token."""
    reasons: list[tuple[type[BaseException], str]] = [
        (aiohttp.ClientConnectorCertificateError, "TLS certificate not accepted"),
        (aiohttp.ClientSSLError, "TLS handshake failed"),
        (aiohttp.ClientConnectorError, "could not connect"),
        (aiohttp.ServerDisconnectedError, "the server closed the connection without answering"),
        (aiohttp.ClientPayloadError, "the answer's body was cut short or malformed"),
        (aiohttp.ClientResponseError, "the answer is not valid HTTP"),
    ]
    for kind, reason in reasons:
        if isinstance(exc, kind):
            return f"{type(exc).__name__}: {reason}"
    return f"{type(exc).__name__}: connection failed or answer unreadable"
