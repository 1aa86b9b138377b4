"""HTTP routes of the notifier: subscriptions, their deliveries, and the email links."""

from __future__ import annotations

import html
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from services.common.auth import Authenticator, WriteLimit, verified
from services.common.errors import ERROR_RESPONSES, ApiError
from services.notifier import messages, rows, signing
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


def represent(s: rows.Subscription, **extra: Any) -> dict[str, Any]:
    """The answer (schemas.Subscription) about a subscription as stored (rows.Subscription:
    the two modules share names, one for each side of the route); `extra`: the secret,
    when it was just made."""
    out = {"id": s.id, "channel": s.channel, "filter": s.filter, "enabled": s.enabled,
           "disabled_reason": s.disabled_reason, "created_at": s.created_at,
           "updated_at": s.updated_at, "last_success_at": s.last_success_at,
           "failing_since": s.failing_since, "suppressed_until": s.suppressed_until}
    if s.channel == "webhook":
        out |= {"url": s.url, "contact_email": s.contact_email,
                "previous_secret_valid_until": s.previous_until}
    else:
        out |= {"address": s.address, "digest": s.digest, "verified": s.verified}
    return out | extra


@dataclass(frozen=True)
class Context:
    """What the routes work with: the app keeps it on app.state.context."""

    store: Store
    guard: Guard
    settings: NotifierSettings
    limit: WriteLimit
    keyed: Authenticator

    async def owner(self, request: Request) -> str:
        """The organization of a valid key (failed keys limited per address); a write
        also within the key's limit, counted by verified key id only."""
        key = verified(request) or await self.keyed.verify(request)
        if request.method not in ("GET", "HEAD"):
            self.limit.check(key.key_id)
        return key.owner

    async def checked_url(self, url: str) -> None:
        try:
            await self.guard.address(url)
        except Refused as exc:
            raise ApiError(422, "url_refused", str(exc), "url") from None

    async def mine(self, request: Request,
                   subscription_id: str) -> tuple[str, rows.Subscription]:
        """The owner and the subscription, if it is theirs; else 404."""
        who = await self.owner(request)
        found = await self.store.subscription(subscription_id, who) if _SUB_ID.match(
            subscription_id) else None
        if found is None:
            raise ApiError(404, "not_found", "no such subscription", "id")
        return who, found


def _context(request: Request) -> Context:
    return request.app.state.context  # type: ignore[no-any-return]


# The key is checked inside each route, not as a dependency: FastAPI solves dependencies
# before it reports an invalid body or query, which would turn those 422s into 401s and
# spend a write token on a request refused anyway.
Ctx = Annotated[Context, Depends(_context)]
# A route's `name` makes its operation id and summary: the names clients were generated with
router = APIRouter(tags=["subscriptions"], responses=ERROR_RESPONSES)


@router.post("/v1/subscriptions", name="create", status_code=201,
             responses={201: {"model": Subscription}})
async def create_subscription(request: Request, new: NewSubscription,
                              ctx: Ctx) -> JSONResponse:
    who = await ctx.owner(request)
    subscription_id = f"sub_{secrets.token_hex(8)}"
    values: dict[str, Any] = {
        "id": subscription_id, "owner": who, "channel": new.channel,
        "filter": new.filter.model_dump_json(), "unsubscribe_token":
            secrets.token_urlsafe(24)}
    secret = None
    first = None
    if isinstance(new, WebhookSubscriptionIn):
        await ctx.checked_url(new.url)
        secret = signing.new_secret()
        values |= {"url": new.url, "secret": ctx.settings.keyring.seal(secret),
                   "contact_email": new.contact_email}
    else:
        token = secrets.token_urlsafe(24)
        values |= {"address": new.address.lower(), "digest": new.digest,
                   "verify_token": token}
        first = messages.verify_body(
            f"{ctx.settings.notifier_public_url}/v1/email/verify?token={token}")
    try:
        made = await ctx.store.create_subscription(
            values, first, limit=ctx.settings.notifier_max_subscriptions_per_org)
    except LimitReached as exc:
        # no Retry-After: waiting frees no place, deleting a subscription does
        raise ApiError(429, "subscription_limit",
                       f"this organization holds {exc.limit} subscriptions, the most it"
                       " may: delete one to make another", "Authorization",
                       limit=exc.limit) from None
    extra = {"secret": secret} if secret else {}
    return _json(represent(made, **extra), 201,
                 {"Location": f"/v1/subscriptions/{subscription_id}"})


@router.get("/v1/subscriptions", name="list_", responses={200: {"model": SubscriptionPage}})
async def list_subscriptions(request: Request, ctx: Ctx,
                             after: Annotated[str | None, Query(pattern=_SUB_ID.pattern)] = None,
                             limit: Annotated[int, Query(ge=1, le=500)] = 100) -> JSONResponse:
    page = await ctx.store.subscriptions(await ctx.owner(request), after, limit)
    return _json({"items": [represent(s) for s in page],
                  "next": page[-1].id if len(page) == limit else None})


@router.get("/v1/subscriptions/{subscription_id}", name="get",
            responses={200: {"model": Subscription}})
async def get_subscription(request: Request, subscription_id: str, ctx: Ctx) -> JSONResponse:
    return _json(represent((await ctx.mine(request, subscription_id))[1]))


@router.patch("/v1/subscriptions/{subscription_id}", name="patch",
              responses={200: {"model": Subscription}})
async def change_subscription(request: Request, subscription_id: str,
                              change: SubscriptionPatch, ctx: Ctx) -> JSONResponse:
    who, sub = await ctx.mine(request, subscription_id)
    values: dict[str, Any] = {}
    fields = change.model_dump(exclude_unset=True)
    if "filter" in fields and change.filter is not None:
        values["filter"] = change.filter.model_dump_json()
    if change.url is not None:
        if sub.channel != "webhook":
            raise ApiError(422, "invalid", "an email subscription has no URL", "url")
        await ctx.checked_url(change.url)
        values["url"] = change.url
    if change.digest is not None:
        if sub.channel != "email":
            raise ApiError(422, "invalid", "a webhook subscription has no digest", "digest")
        values["digest"] = change.digest
    if "contact_email" in fields:
        values["contact_email"] = change.contact_email
    if change.enabled is not None:
        if change.enabled and sub.disabled_reason == "unsubscribed":
            # the recipient's word, not the owner's to undo
            raise ApiError(409, "unsubscribed", "the recipient unsubscribed; only they can"
                           " subscribe again (a new subscription asks them to confirm)",
                           "enabled")
        values["enabled"] = change.enabled
        if change.enabled:
            values |= {"disabled_reason": None, "failing_since": None}
        else:
            values["disabled_reason"] = "disabled by its owner"
    updated = await ctx.store.update_subscription(subscription_id, who, values)
    if updated is None:
        raise ApiError(404, "not_found", "no such subscription", "id")
    return _json(represent(updated))


@router.delete("/v1/subscriptions/{subscription_id}", name="delete", status_code=204)
async def delete_subscription(request: Request, subscription_id: str, ctx: Ctx) -> Response:
    who, _ = await ctx.mine(request, subscription_id)
    await ctx.store.delete_subscription(subscription_id, who)
    return Response(status_code=204)


@router.delete("/v1/subscriptions/{subscription_id}/suppression", status_code=204)
async def unsuppress(request: Request, subscription_id: str, ctx: Ctx) -> Response:
    """Mail to the subscription's address (email) or contact address (webhook) goes
    out again before its suppression expires (the owner knows the mailbox exists
    now); another refusal suppresses it again."""
    _, sub = await ctx.mine(request, subscription_id)
    mailbox = sub.mailbox if sub.suppressed_until is not None else None
    if mailbox is None or not await ctx.store.unsuppress(mailbox):
        raise ApiError(404, "not_found", "the subscription's address is not suppressed",
                       "id")
    return Response(status_code=204)


@router.post("/v1/subscriptions/{subscription_id}/test", name="test", status_code=202,
             responses={202: {"model": TestQueued}})
async def send_test(request: Request, subscription_id: str, ctx: Ctx) -> JSONResponse:
    _, sub = await ctx.mine(request, subscription_id)
    if not sub.enabled:
        raise ApiError(409, "disabled", "the subscription is disabled", "enabled")
    if sub.channel == "email" and not sub.verified:
        raise ApiError(409, "unverified", "the address is not verified yet", "address")
    delivery = await ctx.store.add_delivery(subscription_id, "test",
                                            messages.test_body(subscription_id))
    return _json({"delivery_id": str(delivery)}, 202)


@router.post("/v1/subscriptions/{subscription_id}/rotate-secret", name="rotate",
             responses={200: {"model": Subscription}})
async def rotate_secret(request: Request, subscription_id: str, ctx: Ctx) -> JSONResponse:
    who, sub = await ctx.mine(request, subscription_id)
    if sub.channel != "webhook":
        raise ApiError(409, "invalid", "only webhook subscriptions have a secret", "id")
    secret = signing.new_secret()
    updated = await ctx.store.rotate_secret(subscription_id, who,
                                            ctx.settings.keyring.seal(secret),
                                            ctx.settings.notifier_rotation_overlap_s)
    if updated is None:
        raise ApiError(404, "not_found", "no such subscription", "id")
    return _json(represent(updated, secret=secret))


@router.get("/v1/subscriptions/{subscription_id}/deliveries",
            responses={200: {"model": DeliveryList}})
async def deliveries(request: Request, subscription_id: str, ctx: Ctx, status: Annotated[
        str | None, Query(pattern="^(pending|delivered|failed|cancelled)$")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100) -> JSONResponse:
    who, _ = await ctx.mine(request, subscription_id)
    listed = await ctx.store.deliveries(subscription_id, who, status, limit)
    return _json({"items": [_delivery(d) for d in listed]})


@router.post("/v1/subscriptions/{subscription_id}/recover", status_code=202,
             responses={202: {"model": Requeued}})
async def recover(request: Request, subscription_id: str, since: datetime,
                  ctx: Ctx) -> JSONResponse:
    who, _ = await ctx.mine(request, subscription_id)
    if since.tzinfo is None:
        raise ApiError(422, "invalid", "since needs a time zone (e.g. Z)", "since")
    requeued = await ctx.store.recover(subscription_id, who, since)
    return _json({"requeued": [str(r.id) for r in requeued]}, 202)


@router.post("/v1/deliveries/{delivery_id}/retry", status_code=202,
             responses={202: {"model": Retried}})
async def retry(request: Request, delivery_id: str, ctx: Ctx) -> JSONResponse:
    who = await ctx.owner(request)
    try:
        parsed = uuid.UUID(delivery_id)
    except ValueError:
        raise ApiError(404, "not_found", "no such delivery", "id") from None
    replayed = await ctx.store.retry(parsed, who)
    if replayed is None:
        raise ApiError(404, "not_found", "no failed delivery with this id", "id")
    return _json({"delivery_id": str(replayed.id), "status": replayed.status}, 202)


# email links: no login, the token is the authority

def _email_link(path: str, name: str, target: Callable[[Store, str], Awaitable[str | None]],
                act: Callable[[Store, str], Awaitable[bool]], *, invalid: str,
                ask: tuple[str, str, str], done: tuple[str, str]) -> None:
    """A link in an email: GET shows what following it does and a button (a form that
    POSTs the token back to the same address); only the POST acts. Mail scanners
    open every link of a message, and must not subscribe or unsubscribe anyone.
    `target`: the address a token names (None: not valid); `ask`: the page's title,
    its question ({} the address) and its button; `done`: the title and text after."""

    @router.get(path, name=f"{name}_page", response_class=HTMLResponse, tags=["email"],
                responses=_LINK_PAGES)
    async def page(token: Token, ctx: Ctx) -> HTMLResponse:
        address = await target(ctx.store, token)
        if address is None:
            return _page("Link not valid", invalid, 404)
        title, question, button = ask
        form = (f'<form method="post" action="?token={html.escape(token)}">'
                f'<button type="submit">{html.escape(button)}</button></form>')
        return _page(title, question.format(html.escape(address)), 200, form)

    @router.post(path, name=name, response_class=HTMLResponse, tags=["email"],
                 responses=_LINK_PAGES)
    async def follow(token: Token, ctx: Ctx) -> HTMLResponse:
        if await target(ctx.store, token) is None:
            return _page("Link not valid", invalid, 404)
        await act(ctx.store, token)  # (False: a second click at the same moment did it)
        return _page(*done, 200)


_email_link("/v1/email/verify", "verify", Store.verify_target, Store.verify_email,
            invalid="This link was used already or is not valid.",
            ask=("Confirm your address", "Send makelocal match alerts to {}?", "Confirm"),
            done=("Address confirmed", "Match alerts will come to this address."))
_email_link("/v1/email/unsubscribe", "unsubscribe", Store.unsubscribe_target,
            Store.unsubscribe, invalid="This unsubscribe link is not valid.",
            ask=("Unsubscribe", "Stop match alerts to {}?", "Unsubscribe"),
            done=("Unsubscribed", "No more alerts will be sent to this address."))


@router.get("/v1/email/subscription", tags=["email"],
            summary="The alert an email's link names (the token is the authority)",
            responses={200: {"model": LinkedSubscription}})
async def by_link(token: Token, ctx: Ctx) -> JSONResponse:
    linked = await ctx.store.subscription_by_link(token)
    if linked is None:
        raise ApiError(404, "not_found", "this link is not valid", "token")
    return _json(_linked(linked))


def _linked(s: rows.LinkedSubscription) -> dict[str, Any]:
    """The answer about the alert an email's link names (schemas.LinkedSubscription)."""
    return {"address": s.address, "filter": s.filter, "enabled": s.enabled,
            "verified": s.verified, "disabled_reason": s.disabled_reason}


def _delivery(d: rows.DeliveryRecord) -> dict[str, Any]:
    """The answer about a delivery (schemas.Delivery)."""
    return {"kind": d.kind, "status": d.status, "item_count": d.item_count,
            "attempts": d.attempts, "created_at": d.created_at, "finished_at": d.finished_at,
            "last_status": d.last_status, "last_error": d.last_error, "id": str(d.id),
            "webhook_id": d.webhook_id, "next_attempt_at": d.due_at,
            "attempts_log": [{"at": a.at, "status_code": a.status_code,
                              "duration_ms": a.duration_ms, "error": a.error,
                              "response_body": a.response_body} for a in d.attempt_log]}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(orjson.loads(orjson.dumps(body, default=str)), status_code=status,
                        headers=headers)


def _page(title: str, text: str, status: int, extra: str = "") -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><title>{html.escape(title)}</title>"
                        f"</head><body><h1>{html.escape(title)}</h1><p>{text}</p>{extra}"
                        "</body></html>", status_code=status)
