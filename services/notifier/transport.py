"""One attempt over the network: a signed webhook POST to the address the guard checked,
or one email over SMTP. Each returns what happened; neither raises for the peer's faults."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from urllib.parse import urlsplit

import aiosmtplib

from services.notifier.addresses import Refused
from services.notifier.guard import Guard
from services.notifier.http1 import Http1Pool

RESPONSE_KEEP = 4096  # bytes of a response body kept in the attempt log


@dataclass(frozen=True)
class Result:
    status: int  # HTTP status, SMTP reply code, or 0 when there was no answer
    duration_ms: float
    error: str | None = None
    response: str | None = None
    retry_after: str | None = None


async def post(pool: Http1Pool, guard: Guard, url: str, headers: dict[str, str],
               body: bytes, timeout: float) -> Result:
    """POST without following redirects, to the checked address, the whole exchange
    bounded by `timeout` (a peer that trickles bytes cannot hold it longer); only the
    first 4 KB of the answer are read."""
    started = time.perf_counter()

    def done(status: int, error: str | None = None, response: str | None = None,
             retry_after: str | None = None) -> Result:
        return Result(status, (time.perf_counter() - started) * 1000, error, response,
                      retry_after)

    try:
        scheme, host, port, ip = await guard.address(url)
    except Refused as exc:
        return done(0, f"refused: {exc}")
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = 443 if scheme == "https" else 80
    shown = f"[{host}]" if ":" in host else host  # an IPv6 literal
    host_header = shown if port == default else f"{shown}:{port}"
    try:
        async with asyncio.timeout(timeout):
            response = await pool.post(scheme, str(ip), port, host, target,
                                       headers | {"host": host_header}, body, RESPONSE_KEEP)
    except TimeoutError:
        return done(0, f"timed out after {timeout:g} s")
    except (OSError, EOFError, ValueError, asyncio.LimitOverrunError,
            asyncio.IncompleteReadError) as exc:
        # Our own words: the URL may carry the receiver's token in its query.
        return done(0, f"{type(exc).__name__}: connection failed or answer unreadable")
    text = response.body.decode("utf-8", "replace")
    ok = 200 <= response.status < 300
    return done(response.status, None if ok else f"HTTP {response.status}", text,
                response.headers.get("retry-after"))


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    starttls: bool
    username: str | None
    password: str | None
    timeout: float


async def send_mail(server: SmtpServer, message: EmailMessage) -> Result:
    """One message; the reply code is the status (250 delivered, 4xx try again, 5xx
    permanent)."""
    started = time.perf_counter()

    def done(status: int, error: str | None = None) -> Result:
        return Result(status, (time.perf_counter() - started) * 1000, error)

    try:
        # Flattened here, with the message's own policy: aiosmtplib's would fold long
        # header lines (the unsubscribe URL) into encoded words.
        await aiosmtplib.send(message.as_bytes(), sender=parseaddr(message["From"])[1],
                              recipients=[parseaddr(message["To"])[1]],
                              hostname=server.host, port=server.port,
                              start_tls=server.starttls, username=server.username,
                              password=server.password, timeout=server.timeout)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        first = exc.recipients[0] if exc.recipients else None
        return done(first.code if first else 550, f"recipient refused: {first}"[:300])
    except aiosmtplib.SMTPResponseException as exc:
        return done(exc.code, f"SMTP {exc.code}: {exc.message}"[:300])
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return done(0, f"{type(exc).__name__}: {exc}"[:300])
    return done(250)
