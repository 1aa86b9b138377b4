"""What a mail server's refusal means: that the address does not exist (suppress it), that
our own configuration is wrong (retry, count, alert), or neither (retry).

Only the recipient refused at RCPT TO as non-existent suppresses: an enhanced status
5.1.x (RFC 3463: 5.1.1 bad mailbox, 5.1.2 bad destination system, 5.1.10 null MX, ...)
except 5.1.7 and 5.1.8, which are about the *sender's* address (Postfix reports sender
refusals at RCPT). A 550, 551 or 553 at RCPT TO with no enhanced code suppresses too:
RFC 5321 defines them as mailbox unavailable, user not local and mailbox name not
allowed, and older servers say nothing more; unless its text says it is about us
("550 Relaying denied", "Sender address rejected", qmail's "allowed rcpthosts"). A wrong
guess costs little: a suppression expires, and its subscription's owner can lift it.

Our configuration: a login refused (530, 534, 535, 538 wherever they come), TLS that
fails or is missing, the server refusing us at the greeting, EHLO or MAIL FROM, a relaying
or policy refusal (5.7.x) of the recipient or the message, no connection at all. Those
are never the recipient's fault, so they never suppress."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from enum import Enum

import aiosmtplib

# an enhanced status code (RFC 3463): class.subject.detail, opening a reply's text or, as
# qmail writes it, at its end: "553 sorry, that domain isn't in my list of allowed
# rcpthosts (#5.7.1)"
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")
_ENHANCED_ANYWHERE = re.compile(r"[(#\s]([245])\.(\d{1,3})\.(\d{1,3})\)?\s*$")
# refusals without an enhanced code that are about our standing, not the mailbox; "relay"
# alone is not enough: Postfix says "User unknown in relay recipient table"
_ABOUT_US = re.compile(r"relay(ing)? (access )?(denied|not permitted|prohibited)"
                       r"|not permitted to relay|unable to relay|allowed rcpthosts"
                       r"|sender address", re.IGNORECASE)
LOGIN_REFUSED = frozenset({530, 534, 535, 538})
# without an enhanced code: mailbox unavailable, user not local, mailbox name not allowed
NO_SUCH_MAILBOX = frozenset({550, 551, 553})
SENDER_ADDRESS = frozenset({7, 8})  # X.1.7 and X.1.8: the sender's address, not the rcpt


class Fault(Enum):
    MAILBOX = "mailbox"  # the recipient does not exist: suppress the address
    CONFIG = "config"  # our settings, credentials or standing: the operator must act


@dataclass(frozen=True)
class Refusal:
    status: int  # the reply code, 0 when there was none
    error: str  # for the attempt log
    fault: Fault | None


# The command each of aiosmtplib's refusals answers, most specific first.
_STAGES: tuple[tuple[type[aiosmtplib.SMTPResponseException], str], ...] = (
    (aiosmtplib.SMTPConnectResponseError, "greeting"),
    (aiosmtplib.SMTPHeloError, "EHLO"),
    (aiosmtplib.SMTPAuthenticationError, "AUTH"),
    (aiosmtplib.SMTPSenderRefused, "MAIL FROM"),
    (aiosmtplib.SMTPRecipientRefused, "RCPT TO"),
    (aiosmtplib.SMTPDataError, "DATA"),
)


def fault(stage: str, code: int, text: str) -> Fault | None:
    """What a refusal with reply `code` and `text` at `stage` (an SMTP command, or
    "greeting", or "command" for one unknown) says about the address or about us."""
    enhanced = _ENHANCED.match(text.strip()) or _ENHANCED_ANYWHERE.search(text)
    subject, detail = (int(enhanced[2]), int(enhanced[3])) if enhanced else (None, None)
    if code in LOGIN_REFUSED:
        return Fault.CONFIG
    if subject == 1 and detail in SENDER_ADDRESS:
        return Fault.CONFIG
    if _ABOUT_US.search(text):
        # Postfix refuses an unknown *sender* at RCPT with 5.1.0 ("Sender address
        # rejected"): were it read as the recipient's, every recipient would be suppressed
        return Fault.CONFIG
    permanent = 500 <= code < 600
    if stage == "RCPT TO":
        if not permanent:
            return None
        if enhanced is not None:
            if enhanced[1] == "5" and subject == 1:
                return Fault.MAILBOX
            return Fault.CONFIG if subject == 7 else None
        return Fault.MAILBOX if code in NO_SUCH_MAILBOX else None
    if stage == "DATA":
        return Fault.CONFIG if permanent and subject == 7 else None
    return Fault.CONFIG if permanent else None


def explain(exc: Exception) -> Refusal:
    """An exception of one send through aiosmtplib, in the attempt log's terms."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        exc = exc.recipients[0] if exc.recipients else aiosmtplib.SMTPRecipientRefused(
            550, "", "")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        stage = next((name for kind, name in _STAGES if isinstance(exc, kind)), "command")
        return Refusal(exc.code, f"SMTP {exc.code} at {stage}: {exc.message}",
                       fault(stage, exc.code, exc.message))
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | aiosmtplib.SMTPServerDisconnected):
        return Refusal(0, text, None)  # the server or the path to it faltered: again later
    # no connection, no TLS, no AUTH or STARTTLS offered where our settings need them
    ours = (isinstance(exc, aiosmtplib.SMTPConnectError | ssl.SSLError
                       | aiosmtplib.SMTPNotSupported)
            or type(exc) is aiosmtplib.SMTPException)
    return Refusal(0, text, Fault.CONFIG if ours else None)
