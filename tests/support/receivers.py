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
    to the cloud metadata address); /down (always 503); /nocontent/... (204, no body)."""

    requests: list[Received] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def events(self, path: str | None = None) -> int:
        """How many match events the webhooks posted to `path` (None: anywhere) carried."""
        requests = self.requests if path is None else self.at(path)
        return sum(len(r.json["data"]["events"]) for r in requests)

    async def has_events(self, path: str | None, n: int) -> bool:
        """Whether at least n match events came to `path` (an async check for
        `eventually`)."""
        return self.events(path) >= n

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
        await send({"type": "http.response.body",
                    "body": b"" if status == 204 else b'{"received": true}'})

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
        if parts[0] == "nocontent":  # as most receivers answer: no body, no length
            return 204, {}
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


class LoopbackServer:
    """A raw TCP server on a free loopback port; subclasses answer in `_serve`."""

    server: asyncio.Server | None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class BadPeers(LoopbackServer):
    """Webhook receivers that misbehave, on one loopback port, chosen by the path:
    /hang accepts and never answers; /trickle answers one byte a second; /huge answers
    200 with a 100 MB body; /reset resets the connection."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.requests: Counter = Counter()

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


class LoginMailServer(MailServer):
    """A MailServer that asks for a login (AUTH without TLS, on loopback) and, while
    `refusing`, answers every login 535, as a server does when our password was changed
    on it."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = False
        self.refused = 0
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                     authenticator=self._login, auth_require_tls=False)

    def _login(self, *args: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        if self.refusing:
            self.refused += 1
            return AuthResult(success=False, handled=False,
                              message="535 5.7.8 Authentication credentials invalid")
        return AuthResult(success=True)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        return "250 OK"


class ScriptedMailServer(MailServer):
    """aiosmtpd that refuses as the servers people run do. `replies` maps a command (MAIL,
    RCPT, DATA) to the reply it gets, or "RCPT name"/"DATA name" to the reply for the
    recipient name@...; `login` offers AUTH (without TLS) and answers every login with
    that reply; each command waits `delay` seconds before its answer."""

    def __init__(self, replies: dict[str, str] | None = None, *, login: str | None = None,
                 delay: float = 0.0) -> None:
        super().__init__()
        self.replies, self.login, self.delay = replies or {}, login, delay
        self.logins = 0
        if login is not None:
            self.controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                         authenticator=self._refuse, auth_require_tls=False)

    def _reply(self, command: str, address: str) -> str | None:
        return self.replies.get(f"{command} {address.split('@')[0]}",
                                self.replies.get(command))

    def _refuse(self, *args: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        self.logins += 1
        return AuthResult(success=False, handled=False, message=self.login)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        await asyncio.sleep(self.delay)
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list) -> str:
        await asyncio.sleep(self.delay)
        envelope.mail_from = address
        return self.replies.get("MAIL", "250 OK")

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list) -> str:
        await asyncio.sleep(self.delay)
        self.tries[address] += 1
        refused = self._reply("RCPT", address)
        if refused is not None:
            return refused
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        refused = self._reply("DATA", envelope.rcpt_tos[0])
        if refused is not None:
            return refused
        return await super().handle_DATA(server, session, envelope)


class FixedAnswer(LoopbackServer):
    """An HTTP server on loopback that answers every request with the same head, given
    as bytes: what a server may send and no HTTP library would write."""

    def __init__(self, head: bytes, *, whole: bool = False) -> None:
        """`whole`: `head` is the whole answer, body and framing as given."""
        self.answer = head if whole else (
            head + b"content-length: 0\r\nconnection: close\r\n\r\n")
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.requests += 1
            writer.write(self.answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
