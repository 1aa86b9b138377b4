"""Real peers for the notifier's tests: an HTTP receiver on loopback whose behaviour is
chosen by the path, and SMTP servers (aiosmtpd) that accept, refuse or defer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import orjson
from aiosmtpd.controller import Controller

from makelocal.embedded import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """ASGI app. Paths: /ok; /flaky/N (500 for the first N calls); /slow (answers after
    5 s); /held (answers once `release` is set, 30 s at most); /gone (410); /limited/S
    (429 with Retry-After: S once, then 200); /redirect (302 to /ok); /redirect-inward (302
    to the cloud metadata address); /down (always 503)."""

    requests: list[Received] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append(Received(path, headers, body, time.monotonic()))
        self.calls[path] += 1
        status, extra = self._answer(path, self.calls[path])
        if path == "/slow":
            await asyncio.sleep(5)
        if path == "/held":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 30)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in extra.items()]})
        await send({"type": "http.response.body", "body": b'{"received": true}'})

    def _answer(self, path: str, n: int) -> tuple[int, dict[str, str]]:
        parts = path.strip("/").split("/")
        if parts[0] == "flaky" and n <= int(parts[1]):
            return 500, {}
        if parts[0] == "gone":
            return 410, {}
        if parts[0] == "limited" and n == 1:
            return 429, {"retry-after": parts[1]}
        if parts[0] == "redirect":
            return 302, {"location": "/ok"}
        if parts[0] == "redirect-inward":
            return 302, {"location": "http://169.254.169.254/latest/meta-data/"}
        if parts[0] == "down":
            return 503, {}
        return 200, {}


class MailServer:
    """aiosmtpd on a free loopback port. Recipients starting with `bounce` get 550,
    with `later` 451 on their first message, with `stall` no answer for 30 s; everyone
    else is accepted and kept."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[Message] = []
        self.tries: Counter = Counter()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list) -> str:
        self.tries[address] += 1
        if address.startswith("bounce"):
            return "550 5.1.1 no such user"
        if address.startswith("later") and self.tries[address] == 1:
            return "451 4.3.0 try again later"
        if address.startswith("stall"):
            await asyncio.sleep(30)  # a server that stops answering mid-conversation
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.original_content or envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for m in self.messages if m["To"] == address]

    def __enter__(self) -> MailServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def text_of(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode()
    return ""


class BadPeers:
    """Webhook receivers that misbehave, on one loopback port, chosen by the path:
    /hang accepts and never answers; /trickle answers one byte a second; /huge answers
    200 with a 100 MB body; /reset resets the connection."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.requests: Counter = Counter()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.requests[path] += 1
            if path == "/hang":
                await asyncio.sleep(3600)
            elif path == "/trickle":
                for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok":
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1)
            elif path == "/huge":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 104857600\r\n\r\n")
                chunk = b"x" * 65536
                for _ in range(1600):
                    writer.write(chunk)
                    await writer.drain()
            elif path == "/reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
