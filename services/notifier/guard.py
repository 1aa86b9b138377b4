"""Resolve a webhook's host and decide where it may connect, at registration and again
for every new connection: the HTTP client asks the guard, never DNS, for the addresses of
a name, so a name that answers differently the second time (DNS rebinding) cannot get
through, and there is no second lookup to race."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import aiodns

from services.notifier.addresses import IP, Network, Refused, check_url, why_refused

Resolver = Callable[[str, int], Awaitable[list[str]]]
LOOKUP_TIMEOUT_S = 5.0


class DnsResolver:
    """Lookups with c-ares (aiodns): a timeout really stops one, where a lookup in the
    default executor would go on holding a thread; at most `concurrency` at once, so a
    tenant's slow name server cannot take every lookup."""

    def __init__(self, concurrency: int = 32, nameservers: list[str] | None = None) -> None:
        self.concurrency, self.nameservers = concurrency, nameservers
        self._bound: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore,
                           aiodns.DNSResolver] | None = None

    async def __call__(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        if self._bound is None or self._bound[0] is not loop:  # c-ares works in one loop
            self._bound = (loop, asyncio.Semaphore(self.concurrency),
                           aiodns.DNSResolver(self.nameservers, loop=loop))
        _, slots, dns = self._bound
        async with slots:
            try:
                result = await dns.getaddrinfo(host, port=port, type=socket.SOCK_STREAM)
            except aiodns.error.DNSError as exc:
                raise OSError(f"lookup failed: {exc}") from None
        return [node.addr[0].decode() for node in result.nodes]


system_resolver: Resolver = DnsResolver()


class Guard:
    def __init__(self, allowed: Sequence[Network] = (), resolver: Resolver = system_resolver,
                 on_refused: Callable[[], None] = lambda: None) -> None:
        self.allowed, self.resolver, self.on_refused = tuple(allowed), resolver, on_refused

    async def address(self, url: str) -> tuple[str, str, int, IP]:
        """(scheme, host, port, an address to connect to); Refused when the URL, the
        name's resolution or any address it resolves to is not acceptable."""
        scheme, host, port = self._checked_url(url)
        return scheme, host, port, (await self.addresses(host, port))[0]

    async def connectable(self, url: str) -> None:
        """Refused when the URL, or its host given as an IP literal, is not acceptable.
        A name is checked when the HTTP client connects (it asks addresses(), not DNS)."""
        _, host, port = self._checked_url(url)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return
        await self.addresses(host, port)

    def _checked_url(self, url: str) -> tuple[str, str, int]:
        try:
            return check_url(url)
        except Refused:
            self.on_refused()
            raise

    async def addresses(self, host: str, port: int) -> list[IP]:
        """The addresses of `host` (a name or an IP literal) a connection may go to.
        Every answer must pass: a name with one public and one private address is
        refused."""
        try:
            try:
                answers: list[IP] = [ipaddress.ip_address(host)]
            except ValueError:
                answers = await self._resolve(host, port)
            for ip in answers:
                reason = why_refused(ip, self.allowed)
                if reason is not None:
                    raise Refused(f"the host resolves to a {reason}")
            return answers
        except Refused:
            self.on_refused()
            raise

    async def _resolve(self, host: str, port: int) -> list[IP]:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                raw = await self.resolver(host, port)
        except (OSError, TimeoutError, UnicodeError):
            raise Refused("the host name does not resolve") from None
        answers = []
        for text in raw:
            try:
                answers.append(ipaddress.ip_address(text.split("%")[0]))
            except ValueError:
                continue
        if not answers:
            raise Refused("the host name does not resolve")
        return answers
