"""Webhook host lookups: a name server that never answers cannot hold lookups (or threads)
past their timeout, and no more than the resolver's bound run at once."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from services.notifier.addresses import Refused
from services.notifier.guard import DnsResolver, Guard


async def test_a_silent_name_server_is_cut_off_and_frees_its_slots() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, answers none
    silent.bind(("127.0.0.1", 0))
    try:
        resolver = DnsResolver(concurrency=4,
                               nameservers=[f"127.0.0.1:{silent.getsockname()[1]}"])

        async def lookup(i: int) -> float:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await resolver(f"slow-{i}.example", 443)
            return time.monotonic() - started

        took = await asyncio.gather(*(lookup(i) for i in range(12)))
        assert max(took) < 1.0, took
        assert resolver._bound is not None
        assert resolver._bound[1]._value == 4  # every slot back
        # a resolvable name still resolves through the same resolver's c-ares channel
        assert "127.0.0.1" in await DnsResolver()("localhost", 80)
    finally:
        silent.close()


async def test_the_guard_refuses_a_name_that_does_not_answer_in_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from services.notifier import guard as guard_module

    monkeypatch.setattr(guard_module, "LOOKUP_TIMEOUT_S", 0.2)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        resolver = DnsResolver(nameservers=[f"127.0.0.1:{silent.getsockname()[1]}"])
        started = time.monotonic()
        with pytest.raises(Refused, match="does not resolve"):
            await Guard((), resolver).address("https://hooks.example/in")
        assert time.monotonic() - started < 1.0
    finally:
        silent.close()
