"""A tenant that sends what it should not, during the chaos run: documents whose events
would not fit a NATS message, a YAML alias bomb, deep nesting, and bodies under a made-up
key. None may be accepted, none may get a 500; the parts being killed meanwhile may make
a request fail on its way (that is counted apart). Also the hostile inputs other tests send:
documents that once broke a reader, slow-to-read manifests, made-up keys."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.support.builders import design_toml
from tests.support.helpers import TOML, YAML

MADE_UP_KEY = {"Authorization": "Bearer mlk_0123456789abcdef_" + "A" * 43}


def huge_design() -> bytes:
    """About 1.06 MB of valid OKH TOML: its event would not fit a 1 MiB NATS message."""
    return design_toml("Huge", parts=2000, part_name_chars=500)


def made_up_key() -> str:
    """A key of the shape makelocal issues that no organization holds."""
    return f"mlk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def wide_yaml(size: int = 1_900_000) -> bytes:
    """A valid OKH manifest of `size` bytes whose many small nodes take seconds to read:
    about 11 s with PyYAML's pure loader, 4 s with libyaml."""
    lines = ["okhv: OKH-LOSHv1.0", "name: Wide design", "extra:"]
    total, i = 0, 0
    while total < size:
        line = f"  k{i}: {{a: 1, b: [x, y, z], c: 'text {i}'}}"
        lines.append(line)
        total += len(line) + 1
        i += 1
    return ("\n".join(lines) + "\n").encode()


BOMB = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
    b"%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n" % ((c, c) + (c - 1,) * 9)
    for c in range(ord("b"), ord("k")))
DEEP = b"a: " + b"[" * 100_000 + b"]" * 100_000 + b"\n"

# Documents that once broke a reader (or could): each must be refused or read, quickly and
# in bounded memory, never crash it.
HOSTILE = {
    "NaN": b'{"okhv": "OKH-LOSHv1.0", "name": "x", "part": [{"name": "p", "outer-dimensions":'
           b' {"width": NaN, "height": 1, "depth": 1}}]}',
    "Infinity": b'{"name": "x", "location": {"latitude": Infinity, "longitude": 1e999}}',
    "a 5,000-digit number": b'{"okhv": "OKH-LOSHv1.0", "name": "x", "version": ' + b"9" * 5000
                            + b', "part": [{"name": "p", "outer-dimensions": {"width": '
                            + b"9" * 5000 + b', "height": 1, "depth": 1}}]}',
    "invalid UTF-8": b'{"name": "\xff\xfe x"}',
    "a NUL character": b'{"okhv": "OKH-LOSHv1.0", "name": "a\\u0000b"}',
    "a NUL in a key": b'{"okhv": "OKH-LOSHv1.0", "name": "x", "k\\u0000": 1}',
    "an unpaired surrogate": b'{"okhv": "OKH-LOSHv1.0", "name": "a\\ud800b"}',
    "deep mappings": b'{"a": ' * 5000 + b"1" + b"}" * 5000,
    "deep flow sequences": b"a: " + b"[" * 200_000 + b"]" * 200_000,
}


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
