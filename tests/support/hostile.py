"""A tenant that sends what it should not, during the chaos run: documents whose events
would not fit a NATS message, a YAML alias bomb, deep nesting, and bodies under a made-up
key. None may be accepted, none may get a 500; the parts being killed meanwhile may make
a request fail on its way (that is counted apart)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import httpx

TOML = {"Content-Type": "application/toml"}
YAML = {"Content-Type": "application/yaml"}
MADE_UP_KEY = {"Authorization": "Bearer mlk_0123456789abcdef_" + "A" * 43}


def huge_design() -> bytes:
    """About 1.06 MB of valid OKH TOML: its event would not fit a 1 MiB NATS message."""
    head = 'okhv = "OKH-LOSHv1.0"\nname = "Huge"\nversion = "1"\nlicensor = "Lab"\n'
    return (head + "".join(f'[[part]]\nname = "part {i} {"x" * 500}"\n'
                           for i in range(2000))).encode()


BOMB = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
    b"%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n" % ((c, c) + (c - 1,) * 9)
    for c in range(ord("b"), ord("k")))
DEEP = b"a: " + b"[" * 100_000 + b"]" * 100_000 + b"\n"


@dataclass
class Hostile:
    http: httpx.AsyncClient
    key: dict[str, str]
    registry: str
    answers: Counter = field(default_factory=Counter)  # status -> how many
    lost: int = 0  # requests a dead part never answered

    async def run(self, until: asyncio.Event) -> None:
        huge, n = huge_design(), 0
        while not until.is_set():
            n += 1
            for body, headers in ((huge, self.key | TOML), (BOMB, self.key | YAML),
                                  (DEEP, self.key | YAML), (huge, MADE_UP_KEY | TOML)):
                try:
                    answer = await self.http.post(
                        f"{self.registry}/v1/designs?id=hostile-{n}", content=body,
                        headers=headers)
                    self.answers[answer.status_code] += 1
                except httpx.TransportError:
                    self.lost += 1
                    await asyncio.sleep(0.2)

    def accepted(self) -> int:
        return sum(n for status, n in self.answers.items() if status < 400)
