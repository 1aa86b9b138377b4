"""What is sent: webhook bodies and emails, rendered from stored events. Pure.

A delivery's body is rendered once, when the delivery is recorded, and stored: every
retry and replay sends the same bytes under the same webhook-id (and the same
Message-ID for email), so receivers can deduplicate."""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import quote
from uuid import UUID

import orjson

from contracts import matches

_POLICY = policy.SMTP.clone(max_line_length=998)
# What a delivery carries, and its webhook body's type: match changes, a test, an email
# address's verification, a notice that a subscription was disabled.
DeliveryKind = Literal["matches", "test", "verify", "notice"]


def body(kind: DeliveryKind, data: Mapping[str, Any]) -> bytes:
    """The Standard Webhooks payload shape: type, timestamp, data."""
    return orjson.dumps({"type": kind, "timestamp": datetime.now(UTC).isoformat(),
                         "data": data})


def matches_body(subscription_id: str, events: Sequence[Mapping[str, Any]],
                 total: int) -> bytes:
    return body("matches", {"subscription_id": subscription_id, "count": total,
                            "events": list(events)})


class Decoded:
    """MATCHES messages this process decoded lately (the last `keep`), so that the pairs
    of one change that several passes gather for their subscriptions, and that its own
    consumer has just read, are not decoded again each time."""

    def __init__(self, keep: int = 128) -> None:
        self.keep = keep
        self._changes: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def take(self, message_ids: Iterable[str | None],
             ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """(those of the messages held, the ids of the others)."""
        held, missing = {}, []
        for m in {m for m in message_ids if m is not None}:
            change = self._changes.get(m)
            if change is None:
                missing.append(m)
            else:
                held[m] = change
                self._changes.move_to_end(m)
        return held, sorted(missing)

    def put(self, message_id: str, change: dict[str, Any]) -> None:
        self._changes[message_id] = change
        self._changes.move_to_end(message_id)
        while len(self._changes) > self.keep:
            self._changes.popitem(last=False)


def decode_stored(body: bytes, encoding: str | None) -> dict[str, Any]:
    """A MATCHES message as match_messages keeps it (body and Content-Encoding)."""
    return matches.decode(body, {matches.ENCODING_HEADER: encoding} if encoding else None)


def item_events(items: Iterable[tuple[Any, str | None, int | None, str]],
                changes: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """Items ((payload, message id, pair, event id) each) as the MatchEvents their webhook
    entries carry, rebuilt from the decoded messages they point into; an item recorded
    with its own payload (before match_messages) is that payload."""
    out: list[Any] = []
    for payload, message_id, pair, event_id in items:
        if message_id is None or pair is None:
            out.append(orjson.Fragment(payload) if isinstance(payload, str) else payload)
        else:
            change = changes[message_id]
            out.append(matches.match_event(change, matches.pair_at(change, pair), event_id))
    return out


def test_body(subscription_id: str) -> bytes:
    return body("test", {"subscription_id": subscription_id,
                         "message": "a test event from makelocal; no match is implied"})


def verify_body(link: str) -> bytes:
    return body("verify", {"link": link})


def notice_body(subscription_id: str, reason: str) -> bytes:
    return body("notice", {"subscription_id": subscription_id, "reason": reason})


def _describe(event: Mapping[str, Any], pages: str | None) -> str:
    verb = "can now make" if event.get("type") == "matches.found" else "can no longer make"
    score = event.get("score")
    tail = f" (score {score:.2f})" if isinstance(score, int | float) else ""
    design = event.get("design_id")
    link = f": {pages.rstrip('/')}/designs/{quote(str(design))}" if pages and design else ""
    return f"Facility {event.get('facility_id')} {verb} design {design}{tail}{link}"


def email(delivery_id: UUID, kind: DeliveryKind, payload: Mapping[str, Any], *, sender: str,
          to: str, unsubscribe: str | None, pages: str | None = None) -> EmailMessage:
    """The email for a stored delivery body: plain text and HTML, and for alerts the
    one-click unsubscribe headers (RFC 8058); `pages`: the web page to link designs to."""
    data = payload.get("data") or {}
    if kind == "verify":
        subject = "Confirm your makelocal alerts"
        lines = ["Someone (we hope you) asked makelocal to email match alerts to this address.",
                 "Nothing will be sent until you confirm:", "", str(data.get("link")), "",
                 "If it was not you, ignore this message."]
    elif kind == "notice":
        subject = "A makelocal subscription was disabled"
        lines = [f"Subscription {data.get('subscription_id')} was disabled: "
                 f"{data.get('reason')}.", "Re-enable it with PATCH {\"enabled\": true}."]
    elif kind == "test":
        subject = "makelocal test alert"
        lines = [str(data.get("message"))]
    else:
        events = data.get("events") or []
        total = int(data.get("count") or len(events))
        subject = (f"makelocal: {total} match change{'s' if total != 1 else ''}")
        lines = [_describe(e, pages) for e in events]
        if total > len(events):
            lines.append(f"... and {total - len(events)} more; the API lists them all.")
    if unsubscribe:
        manage = (f"{pages.rstrip('/')}/alerts/manage?{unsubscribe.split('?', 1)[1]}"
                  if pages and kind not in ("verify", "notice") and "?" in unsubscribe
                  else None)
        lines += ["", *([f"Manage this alert: {manage}"] if manage else []),
                  f"Unsubscribe: {unsubscribe}"]
    # Long header lines stay whole: a folded List-Unsubscribe URL gets RFC 2047-encoded,
    # and mail clients then cannot follow it.
    message = EmailMessage(policy=_POLICY)
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = f"<{delivery_id}@makelocal>"
    if unsubscribe and kind != "verify":
        message["List-Unsubscribe"] = f"<{unsubscribe}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    text = "\n".join(lines) + "\n"
    message.set_content(text)
    items = "".join(f"<p>{html.escape(line)}</p>" for line in lines if line)
    message.add_alternative(f"<html><body>{items}</body></html>", subtype="html")
    return message
