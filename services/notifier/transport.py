"""One attempt over the network: a signed webhook POST to the address the guard checked,
or one email over SMTP. Each returns what happened; neither raises for the peer's faults."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr

import aiohttp
import aiosmtplib

from services.notifier.addresses import Refused
from services.notifier.refusals import Fault, explain
from services.notifier.webhook_client import WebhookClient, describe

RESPONSE_KEEP = 4096  # bytes of a response body kept in the attempt log


@dataclass(frozen=True)
class Result:
    status: int  # HTTP status, SMTP reply code, or 0 when there was no answer
    duration_ms: float
    error: str | None = None
    response: str | None = None
    retry_after: str | None = None


async def post(client: WebhookClient, url: str, headers: dict[str, str], body: bytes,
               timeout: float) -> Result:
    """POST without following redirects, to an address the guard checked, the whole
    exchange bounded by `timeout` (a peer that trickles bytes cannot hold it longer); only
    the first 4 KB of the answer are read."""
    started = time.perf_counter()

    def done(status: int, error: str | None = None, response: str | None = None,
             retry_after: str | None = None) -> Result:
        return Result(status, (time.perf_counter() - started) * 1000, error, response,
                      retry_after)

    try:
        async with asyncio.timeout(timeout):
            answer = await client.post(url, headers, body, RESPONSE_KEEP)
    except Refused as exc:
        return done(0, f"refused: {exc}")
    except TimeoutError:
        return done(0, f"timed out after {timeout:g} s")
    except (OSError, aiohttp.ClientError, ValueError) as exc:
        return done(0, describe(exc))
    text = answer.body.decode("utf-8", "replace")
    ok = 200 <= answer.status < 300
    return done(answer.status, None if ok else f"HTTP {answer.status}", text,
                answer.retry_after)


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    starttls: bool
    username: str | None
    password: str | None
    timeout: float


@dataclass(frozen=True)
class MailResult(Result):
    fault: Fault | None = None  # what a refusal says about the address or about us


async def send_mail(server: SmtpServer, message: EmailMessage) -> MailResult:
    """One message; the reply code is the status (250 delivered), and what a refusal
    means (refusals.py). The whole conversation is bounded by the server's timeout:
    aiosmtplib's own applies to each command, and a server answering each just in time
    could hold a send past its lease, when another process would send it again."""
    started = time.perf_counter()

    def done(status: int, error: str | None = None,
             fault: Fault | None = None) -> MailResult:
        if error and server.password:  # a server that echoes what it was sent
            error = error.replace(server.password, "[password]")
        return MailResult(status, (time.perf_counter() - started) * 1000,
                          error[:300] if error else None, fault=fault)

    try:
        async with asyncio.timeout(server.timeout):
            # Flattened here, with the message's own policy: aiosmtplib's would fold long
            # header lines (the unsubscribe URL) into encoded words.
            await aiosmtplib.send(message.as_bytes(), sender=parseaddr(message["From"])[1],
                                  recipients=[parseaddr(message["To"])[1]],
                                  hostname=server.host, port=server.port,
                                  start_tls=server.starttls, username=server.username,
                                  password=server.password, timeout=server.timeout)
    except TimeoutError:  # ours, or one command's (SMTPTimeoutError is a TimeoutError)
        return done(0, f"timed out after {server.timeout:g} s")
    except (aiosmtplib.SMTPException, OSError) as exc:
        refusal = explain(exc)
        return done(refusal.status, refusal.error, refusal.fault)
    return done(250)
