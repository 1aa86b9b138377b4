"""HTTP routes of the notifier: subscriptions, their deliveries, and the email links."""

from __future__ import annotations

import html
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from contracts.matches import MatchEvent
from services.common.auth import Authenticator, verified
from services.common.http import ERROR_RESPONSES, ApiError, WriteLimit
from services.notifier import messages, signing
from services.notifier.addresses import Refused
from services.notifier.guard import Guard
from services.notifier.schemas import (
    DeliveryList,
    LinkedSubscription,
    Requeued,
    Retried,
    Subscription,
    SubscriptionPage,
    TestQueued,
)
from services.notifier.settings import NotifierSettings
from services.notifier.store import LimitReached, Store
from services.notifier.subscriptions import (
    EmailSubscriptionIn,
    SubscriptionPatch,
    WebhookSubscriptionIn,
)

_SUB_ID = re.compile(r"^sub_[0-9a-f]{16}$")
# secrets.token_urlsafe's alphabet; anything else cannot be a token we issued
Token = Annotated[str, Query(max_length=100, pattern=r"^[A-Za-z0-9_-]+$")]
# Email links are opened by people: an unknown link answers a page, not JSON.
_LINK_PAGES: dict[int | str, dict[str, Any]] = {404: {
    "description": "the link is not valid: an HTML page says so",
    "content": {"text/html": {"schema": {"type": "string"}}}}}
NewSubscription = Annotated[WebhookSubscriptionIn | EmailSubscriptionIn,
                            Body(discriminator="channel")]


def represent(row: asyncpg.Record, **extra: Any) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "channel", "filter", "enabled", "disabled_reason",
                               "created_at", "updated_at", "last_success_at", "failing_since",
                               "suppressed_until")}
    if row["channel"] == "webhook":
        out |= {"url": row["url"], "contact_email": row["contact_email"],
                "previous_secret_valid_until": row["previous_until"]}
    else:
        out |= {"address": row["address"], "digest": row["digest"],
                "verified": row["verified"]}
    return out | extra


def router(store: Store, guard: Guard, settings: NotifierSettings,
           limit: WriteLimit, keyed: Authenticator) -> APIRouter:
    api = APIRouter(tags=["subscriptions"], responses=ERROR_RESPONSES)

    async def owner(request: Request) -> str:
        """The organization of a valid key (failed keys limited per address); a write
        also within the key's limit, counted by verified key id only."""
        key = verified(request) or await keyed.verify(request)
        if request.method not in ("GET", "HEAD"):
            limit.check(key.key_id)
        return key.owner

    async def checked_url(url: str) -> None:
        try:
            await guard.address(url)
        except Refused as exc:
            raise ApiError(422, "url_refused", str(exc), "url") from None

    async def mine(request: Request, subscription_id: str) -> tuple[str, asyncpg.Record]:
        who = await owner(request)
        row = await store.subscription(subscription_id, who) if _SUB_ID.match(
            subscription_id) else None
        if row is None:
            raise ApiError(404, "not_found", "no such subscription", "id")
        return who, row

    @api.post("/v1/subscriptions", status_code=201, responses={201: {"model": Subscription}})
    async def create(request: Request, new: NewSubscription) -> JSONResponse:
        who = await owner(request)
        subscription_id = f"sub_{secrets.token_hex(8)}"
        values: dict[str, Any] = {
            "id": subscription_id, "owner": who, "channel": new.channel,
            "filter": new.filter.model_dump_json(), "unsubscribe_token":
                secrets.token_urlsafe(24)}
        secret = None
        first = None
        if isinstance(new, WebhookSubscriptionIn):
            await checked_url(new.url)
            secret = signing.new_secret()
            values |= {"url": new.url, "secret": settings.keyring.seal(secret),
                       "contact_email": new.contact_email}
        else:
            token = secrets.token_urlsafe(24)
            values |= {"address": new.address.lower(), "digest": new.digest,
                       "verify_token": token}
            first = messages.verify_body(
                f"{settings.notifier_public_url}/v1/email/verify?token={token}")
        try:
            row = await store.create_subscription(
                values, first, limit=settings.notifier_max_subscriptions_per_org)
        except LimitReached as exc:
            # no Retry-After: waiting frees no place, deleting a subscription does
            raise ApiError(429, "subscription_limit",
                           f"this organization holds {exc.limit} subscriptions, the most it"
                           " may: delete one to make another", "Authorization",
                           limit=exc.limit) from None
        extra = {"secret": secret} if secret else {}
        return _json(represent(row, **extra), 201,
                     {"Location": f"/v1/subscriptions/{subscription_id}"})

    @api.get("/v1/subscriptions", responses={200: {"model": SubscriptionPage}})
    async def list_(request: Request,
                    after: Annotated[str | None, Query(pattern=_SUB_ID.pattern)] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 100) -> JSONResponse:
        rows = await store.subscriptions(await owner(request), after, limit)
        return _json({"items": [represent(r) for r in rows],
                      "next": rows[-1]["id"] if len(rows) == limit else None})

    @api.get("/v1/subscriptions/{subscription_id}", responses={200: {"model": Subscription}})
    async def get(request: Request, subscription_id: str) -> JSONResponse:
        return _json(represent((await mine(request, subscription_id))[1]))

    @api.patch("/v1/subscriptions/{subscription_id}",
               responses={200: {"model": Subscription}})
    async def patch(request: Request, subscription_id: str,
                    change: SubscriptionPatch) -> JSONResponse:
        who, row = await mine(request, subscription_id)
        values: dict[str, Any] = {}
        fields = change.model_dump(exclude_unset=True)
        if "filter" in fields and change.filter is not None:
            values["filter"] = change.filter.model_dump_json()
        if change.url is not None:
            if row["channel"] != "webhook":
                raise ApiError(422, "invalid", "an email subscription has no URL", "url")
            await checked_url(change.url)
            values["url"] = change.url
        if change.digest is not None:
            if row["channel"] != "email":
                raise ApiError(422, "invalid", "a webhook subscription has no digest", "digest")
            values["digest"] = change.digest
        if "contact_email" in fields:
            values["contact_email"] = change.contact_email
        if change.enabled is not None:
            if change.enabled and row["disabled_reason"] == "unsubscribed":
                # the recipient's word, not the owner's to undo
                raise ApiError(409, "unsubscribed", "the recipient unsubscribed; only they can"
                               " subscribe again (a new subscription asks them to confirm)",
                               "enabled")
            values["enabled"] = change.enabled
            if change.enabled:
                values |= {"disabled_reason": None, "failing_since": None}
            else:
                values["disabled_reason"] = "disabled by its owner"
        updated = await store.update_subscription(subscription_id, who, values)
        if updated is None:
            raise ApiError(404, "not_found", "no such subscription", "id")
        return _json(represent(updated))

    @api.delete("/v1/subscriptions/{subscription_id}", status_code=204)
    async def delete(request: Request, subscription_id: str) -> Response:
        who, _ = await mine(request, subscription_id)
        await store.delete_subscription(subscription_id, who)
        return Response(status_code=204)

    @api.delete("/v1/subscriptions/{subscription_id}/suppression", status_code=204)
    async def unsuppress(request: Request, subscription_id: str) -> Response:
        """Mail to the subscription's address (email) or contact address (webhook) goes
        out again before its suppression expires (the owner knows the mailbox exists
        now); another refusal suppresses it again."""
        _, row = await mine(request, subscription_id)
        address = row["address"] or row["contact_email"]
        if row["suppressed_until"] is None or not await store.unsuppress(address):
            raise ApiError(404, "not_found", "the subscription's address is not suppressed",
                           "id")
        return Response(status_code=204)

    @api.post("/v1/subscriptions/{subscription_id}/test", status_code=202,
              responses={202: {"model": TestQueued}})
    async def test(request: Request, subscription_id: str) -> JSONResponse:
        _, row = await mine(request, subscription_id)
        if not row["enabled"]:
            raise ApiError(409, "disabled", "the subscription is disabled", "enabled")
        if row["channel"] == "email" and not row["verified"]:
            raise ApiError(409, "unverified", "the address is not verified yet", "address")
        delivery = await store.add_delivery(subscription_id, "test",
                                            messages.test_body(subscription_id))
        return _json({"delivery_id": str(delivery)}, 202)

    @api.post("/v1/subscriptions/{subscription_id}/rotate-secret",
              responses={200: {"model": Subscription}})
    async def rotate(request: Request, subscription_id: str) -> JSONResponse:
        who, row = await mine(request, subscription_id)
        if row["channel"] != "webhook":
            raise ApiError(409, "invalid", "only webhook subscriptions have a secret", "id")
        secret = signing.new_secret()
        updated = await store.rotate_secret(subscription_id, who,
                                            settings.keyring.seal(secret),
                                            settings.notifier_rotation_overlap_s)
        if updated is None:
            raise ApiError(404, "not_found", "no such subscription", "id")
        return _json(represent(updated, secret=secret))

    @api.get("/v1/subscriptions/{subscription_id}/deliveries",
             responses={200: {"model": DeliveryList}})
    async def deliveries(request: Request, subscription_id: str, status: Annotated[
            str | None, Query(pattern="^(pending|delivered|failed|cancelled)$")] = None,
            limit: Annotated[int, Query(ge=1, le=500)] = 100) -> JSONResponse:
        who, _ = await mine(request, subscription_id)
        rows = await store.deliveries(subscription_id, who, status, limit)
        return _json({"items": [_delivery(r) for r in rows]})

    @api.post("/v1/subscriptions/{subscription_id}/recover", status_code=202,
              responses={202: {"model": Requeued}})
    async def recover(request: Request, subscription_id: str, since: datetime) -> JSONResponse:
        who, _ = await mine(request, subscription_id)
        if since.tzinfo is None:
            raise ApiError(422, "invalid", "since needs a time zone (e.g. Z)", "since")
        rows = await store.recover(subscription_id, who, since)
        return _json({"requeued": [str(r["id"]) for r in rows]}, 202)

    @api.post("/v1/deliveries/{delivery_id}/retry", status_code=202,
              responses={202: {"model": Retried}})
    async def retry(request: Request, delivery_id: str) -> JSONResponse:
        who = await owner(request)
        try:
            parsed = uuid.UUID(delivery_id)
        except ValueError:
            raise ApiError(404, "not_found", "no such delivery", "id") from None
        row = await store.retry(parsed, who)
        if row is None:
            raise ApiError(404, "not_found", "no failed delivery with this id", "id")
        return _json({"delivery_id": str(row["id"]), "status": row["status"]}, 202)

    # email links: no login, the token is the authority

    def email_link(path: str, name: str, target: Callable[[str], Awaitable[str | None]],
                   act: Callable[[str], Awaitable[bool]], *, invalid: str,
                   ask: tuple[str, str, str], done: tuple[str, str]) -> None:
        """A link in an email: GET shows what following it does and a button (a form that
        POSTs the token back to the same address); only the POST acts. Mail scanners
        open every link of a message, and must not subscribe or unsubscribe anyone.
        `target`: the address a token names (None: not valid); `ask`: the page's title,
        its question ({} the address) and its button; `done`: the title and text after."""

        @api.get(path, name=f"{name}_page", response_class=HTMLResponse, tags=["email"],
                 responses=_LINK_PAGES)
        async def page(token: Token) -> HTMLResponse:
            address = await target(token)
            if address is None:
                return _page("Link not valid", invalid, 404)
            title, question, button = ask
            form = (f'<form method="post" action="?token={html.escape(token)}">'
                    f'<button type="submit">{html.escape(button)}</button></form>')
            return _page(title, question.format(html.escape(address)), 200, form)

        @api.post(path, name=name, response_class=HTMLResponse, tags=["email"],
                  responses=_LINK_PAGES)
        async def follow(token: Token) -> HTMLResponse:
            if await target(token) is None:
                return _page("Link not valid", invalid, 404)
            await act(token)  # (False: a second click at the same moment did it)
            return _page(*done, 200)

    email_link("/v1/email/verify", "verify", store.verify_target, store.verify_email,
               invalid="This link was used already or is not valid.",
               ask=("Confirm your address", "Send makelocal match alerts to {}?", "Confirm"),
               done=("Address confirmed", "Match alerts will come to this address."))
    email_link("/v1/email/unsubscribe", "unsubscribe", store.unsubscribe_target,
               store.unsubscribe, invalid="This unsubscribe link is not valid.",
               ask=("Unsubscribe", "Stop match alerts to {}?", "Unsubscribe"),
               done=("Unsubscribed", "No more alerts will be sent to this address."))

    @api.get("/v1/email/subscription", tags=["email"],
             summary="The alert an email's link names (the token is the authority)",
             responses={200: {"model": LinkedSubscription}})
    async def by_link(token: Token) -> JSONResponse:
        row = await store.subscription_by_link(token)
        if row is None:
            raise ApiError(404, "not_found", "this link is not valid", "token")
        return _json({"address": row["address"], "filter": row["filter"],
                      "enabled": row["enabled"], "verified": row["verified"],
                      "disabled_reason": row["disabled_reason"]})

    return api


# The webhooks: what the notifier POSTs to a webhook subscription's URL (the bodies
# services/notifier/messages.py renders), for the document's `webhooks` section.

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


def webhooks(hooks: APIRouter) -> None:
    """Describe the webhooks in `hooks` (FastAPI's app.webhooks)."""

    @hooks.post("matches", summary="Match changes for a webhook subscription",
                operation_id="webhook_matches", response_class=Response,
                responses=_WEBHOOK_ANSWERS)
    async def matches(body: MatchesWebhook, webhook_id: WebhookId,
                      webhook_timestamp: WebhookTimestamp,
                      webhook_signature: WebhookSignature) -> None:
        """POSTed to the subscription's URL as JSON, signed with its secret."""

    @hooks.post("test", summary="A test event for a webhook subscription",
                operation_id="webhook_test", response_class=Response,
                responses=_WEBHOOK_ANSWERS)
    async def test(body: TestWebhook, webhook_id: WebhookId,
                   webhook_timestamp: WebhookTimestamp,
                   webhook_signature: WebhookSignature) -> None:
        """POSTed to the subscription's URL as JSON, signed with its secret."""


def _delivery(row: asyncpg.Record) -> dict[str, Any]:
    out = {k: row[k] for k in ("kind", "status", "item_count", "attempts", "created_at",
                               "finished_at", "last_status", "last_error")}
    out["id"] = str(row["id"])
    out["webhook_id"] = f"msg_{row['id'].hex}"
    out["next_attempt_at"] = row["next_attempt_at"] if row["status"] == "pending" else None
    log = row["attempt_log"]
    out["attempts_log"] = orjson.loads(log) if isinstance(log, str | bytes) else log
    return out


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(orjson.loads(orjson.dumps(body, default=str)), status_code=status,
                        headers=headers)


def _page(title: str, text: str, status: int, extra: str = "") -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><title>{html.escape(title)}</title>"
                        f"</head><body><h1>{html.escape(title)}</h1><p>{text}</p>{extra}"
                        "</body></html>", status_code=status)
