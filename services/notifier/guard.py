"""Resolve a webhook's host and decide where it may connect, at registration and again
at every attempt: the connection goes to the very address that was checked, so a name
that answers differently the second time (DNS rebinding) cannot get through."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

from services.notifier.addresses import IP, Network, Refused, check_url, why_refused

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Guard:
    def __init__(self, allowed: Sequence[Network] = (), resolver: Resolver = system_resolver,
                 on_refused: Callable[[], None] = lambda: None) -> None:
        self.allowed, self.resolver, self.on_refused = tuple(allowed), resolver, on_refused

    async def address(self, url: str) -> tuple[str, str, int, IP]:
        """(scheme, host, port, the address to connect to); Refused when the URL, the
        name's resolution or any address it resolves to is not acceptable. Every answer
        must pass: a name with one public and one private address is refused."""
        try:
            scheme, host, port = check_url(url)
            try:
                literal = ipaddress.ip_address(host)
                answers: list[IP] = [literal]
            except ValueError:
                answers = await self._resolve(host, port)
            for ip in answers:
                reason = why_refused(ip, self.allowed)
                if reason is not None:
                    raise Refused(f"the host resolves to a {reason}")
            return scheme, host, port, answers[0]
        except Refused:
            self.on_refused()
            raise

    async def _resolve(self, host: str, port: int) -> list[IP]:
        try:
            raw = await asyncio.wait_for(self.resolver(host, port), 5.0)
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
