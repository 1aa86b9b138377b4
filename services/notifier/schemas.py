"""The notifier's answer bodies, for its OpenAPI document (the routes build dicts)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from services.notifier.messages import DeliveryKind
from services.notifier.subscriptions import Digest, Filter

DeliveryStatus = Literal["pending", "delivered", "failed", "cancelled"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Subscription(_Out):
    id: str
    filter: Filter
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_success_at: datetime | None
    failing_since: datetime | None
    suppressed_until: datetime | None = Field(description="until when mail to its address is"
                                                          " held back (the mail server said"
                                                          " it does not exist)")


class WebhookSubscription(_Subscription):
    channel: Literal["webhook"]
    url: str
    contact_email: str | None
    previous_secret_valid_until: datetime | None = Field(
        description="after a rotation: until when the previous secret also signs")
    secret: str | None = Field(None, description="on creation and rotation only")


class EmailSubscription(_Subscription):
    channel: Literal["email"]
    address: str
    digest: Digest
    verified: bool


class Subscription(RootModel[Annotated[WebhookSubscription | EmailSubscription,
                                       Field(discriminator="channel")]]):
    pass


class SubscriptionPage(_Out):
    items: list[Subscription]
    next: str | None = Field(description="pass as after= for the next page")


class TestQueued(_Out):
    delivery_id: str


class Attempt(_Out):
    at: datetime
    status_code: int
    duration_ms: float
    error: str | None
    response_body: str | None


class Delivery(_Out):
    id: str
    webhook_id: str
    kind: DeliveryKind
    status: DeliveryStatus
    item_count: int
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    attempts_log: list[Attempt]


class DeliveryList(_Out):
    items: list[Delivery]


class Requeued(_Out):
    requeued: list[str] = Field(description="the ids of the deliveries queued again")


class Retried(_Out):
    delivery_id: str
    status: DeliveryStatus


class LinkedSubscription(_Out):
    address: str
    filter: Filter
    enabled: bool
    verified: bool
    disabled_reason: str | None
