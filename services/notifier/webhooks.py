"""The webhooks: what the notifier POSTs to a webhook subscription's URL (the bodies
services/notifier/messages.py renders), described for the OpenAPI document's `webhooks`
section."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header
from fastapi.responses import Response
from pydantic import BaseModel, Field

from contracts.matches import MatchEvent


class MatchesData(BaseModel):
    subscription_id: str
    count: int = Field(description="how many match changes the batch holds")
    events: list[MatchEvent]


class MatchesWebhook(BaseModel):
    """A batch of match changes for one subscription."""

    type: Literal["matches"]
    timestamp: datetime = Field(description="when the body was made (the same on every"
                                            " attempt and replay)")
    data: MatchesData


class TestData(BaseModel):
    subscription_id: str
    message: str


class TestWebhook(BaseModel):
    """What POST /v1/subscriptions/{id}/test sends: no match is implied."""

    type: Literal["test"]
    timestamp: datetime
    data: TestData


WebhookId = Annotated[str, Header(
    alias="webhook-id", pattern=r"^msg_[0-9a-f]{32}$",
    description="the delivery's id: the same on every attempt and replay (deduplicate on it)")]
WebhookTimestamp = Annotated[int, Header(
    alias="webhook-timestamp", description="Unix seconds when this attempt was signed")]
WebhookSignature = Annotated[str, Header(
    alias="webhook-signature", pattern=r"^v1,[A-Za-z0-9+/=]+( v1,[A-Za-z0-9+/=]+)*$",
    description="space-separated `v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per"
                " secret in use (two for 24 h after a rotation); Standard Webhooks")]
_WEBHOOK_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "any 2xx: delivered (of the answer, 4 KB are read and kept)"},
    410: {"description": "Gone: the subscription is disabled"},
    429: {"description": "retried, no sooner than Retry-After (within the schedule's delay"
                         " and twice it); so is 503"},
    "default": {"description": "any other answer (3xx included: never followed), or none:"
                               " retried on the schedule, then failed and replayable"}}


router = APIRouter()
"""For FastAPI(webhooks=...): its routes are never served, only described."""


@router.post("matches", summary="Match changes for a webhook subscription",
               operation_id="webhook_matches", response_class=Response,
               responses=_WEBHOOK_ANSWERS)
async def matches_webhook(body: MatchesWebhook, webhook_id: WebhookId,
                          webhook_timestamp: WebhookTimestamp,
                          webhook_signature: WebhookSignature) -> None:
    """POSTed to the subscription's URL as JSON, signed with its secret."""


@router.post("test", summary="A test event for a webhook subscription",
               operation_id="webhook_test", response_class=Response,
               responses=_WEBHOOK_ANSWERS)
async def test_webhook(body: TestWebhook, webhook_id: WebhookId,
                       webhook_timestamp: WebhookTimestamp,
                       webhook_signature: WebhookSignature) -> None:
    """POSTed to the subscription's URL as JSON, signed with its secret."""
