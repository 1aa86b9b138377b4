"""What the store hands out besides deliveries to attempt (delivery.Delivery): a
subscription as its owner sees it, the alert an email's link names, a delivery with its
attempt log, and a delivery queued again. Pure: built once at the store's edge
(store.py's `_from_row` functions), read by attribute everywhere else."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.notifier.delivery import Channel, webhook_id
from services.notifier.messages import DeliveryKind
from services.notifier.schemas import DeliveryStatus
from services.notifier.subscriptions import Digest


# Slotted and frozen like Delivery: a row read is a snapshot, never written back.
@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription's stored state (never its secrets: the store does not read them
    for this)."""

    id: str
    owner: str
    channel: Channel
    url: str | None = field(repr=False)  # webhook; out of repr(): it may hold a token
    address: str | None  # email
    # as stored (JSON of subscriptions.Filter): answered as it is, so a filter naming a
    # process the vocabulary has since lost still reads back
    filter: dict[str, Any]
    digest: Digest  # an email's (a webhook's holds the default, unused)
    verified: bool
    enabled: bool
    disabled_reason: str | None
    contact_email: str | None  # webhook
    failing_since: datetime | None
    last_success_at: datetime | None
    created_at: datetime
    updated_at: datetime
    previous_until: datetime | None  # until when the previous secret also signs
    suppressed_until: datetime | None  # mail to `mailbox` held back until then

    @property
    def mailbox(self) -> str | None:
        """Where its mail goes: the address (email) or the contact address (webhook)."""
        return self.address or self.contact_email


@dataclass(frozen=True, slots=True)
class LinkedSubscription:
    """The alert an email's manage link names: what its recipient may see of it."""

    address: str
    filter: dict[str, Any]  # as stored, as in Subscription
    enabled: bool
    verified: bool
    disabled_reason: str | None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a delivery, as recorded."""

    # ISO 8601 as PostgreSQL wrote it (json_agg, in the session's time zone, trailing
    # zeros of the fraction dropped): answered verbatim, as before rows were typed; a
    # datetime would come back out with six fraction digits
    at: str
    status_code: int
    duration_ms: float
    error: str | None
    response_body: str | None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A delivery as its owner lists it, with its attempts, oldest first."""

    id: uuid.UUID
    kind: DeliveryKind
    status: DeliveryStatus
    item_count: int
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    attempt_log: tuple[Attempt, ...]

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.id)

    @property
    def due_at(self) -> datetime | None:
        """When it is attempted next; none once it is finished."""
        return self.next_attempt_at if self.status == "pending" else None


@dataclass(frozen=True, slots=True)
class Replayed:
    """A finished delivery queued again (retry, recover): pending, under its own id."""

    id: uuid.UUID
    status: DeliveryStatus
