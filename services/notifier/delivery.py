"""A delivery as an attempt sees it: the delivery and what its subscription holds for
sending it, as the store hands it out when the delivery is claimed. Pure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from services.notifier.messages import DeliveryKind

# How an attempt goes out (a subscription's channel, but a webhook's notice is an email)
Channel = Literal["webhook", "email"]


# Slotted and built without validation: the dispatcher claims thousands a second.
@dataclass(frozen=True, slots=True)
class Delivery:
    id: uuid.UUID
    kind: DeliveryKind
    # Rendered once when it was recorded: every attempt sends these bytes. Out of repr():
    # a verification's or an email's holds its links' tokens.
    body: bytes = field(repr=False)
    attempts: int  # this one counted (claiming counts it)
    item_count: int
    oldest_change_at: datetime | None
    trace_contexts: tuple[str, ...] | None  # the first is its attempts' parent span
    subscription_id: str
    channel: Channel  # the subscription's
    url: str | None = field(repr=False)  # a receiver's may hold its token
    address: str | None
    contact_email: str | None
    enabled: bool
    verified: bool
    # Secrets (the token unsubscribes anyone holding it) stay out of repr(): a Delivery
    # in a log line or a traceback's locals must not carry them.
    unsubscribe_token: str | None = field(repr=False)
    digest: str | None
    secret: str | None = field(repr=False)  # sealed (sealing.Keyring)
    # sealed; only while a rotation's overlap lasts
    previous_secret: str | None = field(repr=False)
    failing: bool  # its subscription has failed since its last success
    owner: str

    @property
    def sent_by(self) -> Channel:
        return "email" if self.channel == "email" or self.kind == "notice" else "webhook"

    @property
    def recipient(self) -> str | None:
        """Who an email goes to: a notice to the contact the owner gave, the rest to the
        subscription's address."""
        return self.contact_email if self.kind == "notice" else self.address

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.id)

    @property
    def cancel_reason(self) -> str | None:
        """Why this delivery must not go out now, if it must not. A verification or a
        notice goes out whatever the subscription's state: they are about that state."""
        if self.kind in ("verify", "notice"):
            return None
        if not self.enabled:
            return "subscription disabled"
        if self.channel == "email" and not self.verified:
            return "address not verified"
        return None


def webhook_id(delivery_id: uuid.UUID) -> str:
    """The same for every attempt and replay: receivers deduplicate by it."""
    return f"msg_{delivery_id.hex}"
