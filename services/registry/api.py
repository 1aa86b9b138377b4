"""HTTP routes of the registry: parse, authorize, call the store, map errors to JSON.
The same routes serve designs and facilities."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from contracts.errors import InvalidInput
from contracts.events import EntityKind
from contracts.models import ID_PATTERN
from ingest.documents import format_of
from ingest.validation import report
from services.common import tracing
from services.common.auth import CHALLENGE, Authenticator, WriteLimit
from services.common.errors import ERROR_RESPONSES, ApiError, closing
from services.common.near import parse_near
from services.common.ratelimit import InFlight, InFlightFull
from services.common.sandbox import Busy, Exceeded, ReaderLost, ReaderPool
from services.registry.bodies import request_body
from services.registry.entities import Prepared, expand
from services.registry.schemas import MODELS, Deleted, Report
from services.registry.store import Filters, Store, decode_cursor
from services.registry.writes import WriteMode, WriteRefused

_ID = re.compile(ID_PATTERN)
_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,9})"?\s*$')


def router(kind: EntityKind, store: Store, limit: WriteLimit, auth: Authenticator,
           readers: ReaderPool, in_flight: InFlight, body_timeout_s: float) -> APIRouter:
    plural = f"{kind.value}s" if kind is EntityKind.design else "facilities"
    api = APIRouter(prefix=f"/v1/{plural}", tags=[plural], responses=ERROR_RESPONSES)
    # The bodies are rendered JSON text (RenderedJSON): the models document them only.
    models = MODELS[kind]

    async def key_of(request: Request) -> tuple[str, str]:
        """A verified key within its write limit, or 401 / 429 before the body is read: a
        made-up key costs a lookup, never a parse, and gets no write bucket (the limit
        counts verified key ids only). The store checks the key again in the write's
        transaction, which sees a revocation the short-lived cache of verified keys may not."""
        try:
            key = await auth.verify(request)
            limit.check(key.key_id)
        except ApiError as exc:
            raise closing(exc) from None
        return key.pair

    async def body_of(request: Request, entity_id: str | None, key_id: str) -> Prepared:
        return await read_body(request, readers, kind, entity_id, key_id, body_timeout_s)

    async def write(request: Request, entity_id: str | None, mode: WriteMode,
                    if_match: str | None) -> JSONResponse:
        key = await key_of(request)
        try:
            with in_flight.enter(key[0]):
                return await _write(request, key, entity_id, mode, if_match)
        except InFlightFull as exc:
            raise closing(ApiError(429, "too_many_in_flight", f"{exc.cap} writes of this key"
                                    " are under way; wait for one to finish", "Authorization",
                                    {"Retry-After": "1"})) from None

    async def _write(request: Request, key: tuple[str, str], entity_id: str | None,
                     mode: WriteMode, if_match: str | None) -> JSONResponse:
        if entity_id is not None:
            _check_id(entity_id)
        prepared = None if mode is WriteMode.delete else await body_of(request, entity_id,
                                                                       key[0])
        target = entity_id or (prepared.entity.id if prepared else "")
        _check_id(target)
        try:
            decision, row = await store.write(kind, target, prepared, mode=mode, key=key,
                                              expected_version=_version(if_match),
                                              trace_context=tracing.current_text())
        except WriteRefused as exc:
            if exc.status == 401:
                auth.forget(key[0])
            raise ApiError(exc.status, exc.code, exc.message, exc.field,
                           CHALLENGE if exc.status == 401 else None, limit=exc.limit) from None
        except asyncpg.UniqueViolationError:
            raise ApiError(409, "exists", "created concurrently by another request",
                           "id") from None
        if mode is WriteMode.delete:
            return JSONResponse({"id": target, "version": decision.version, "deleted": True,
                                 "event_id": decision.event_id})
        headers = {"ETag": _etag(row["version"])}
        if decision.created:
            headers["Location"] = f"/v1/{plural}/{target}"
        # the change's event id, to follow it with `makelocal trace` (none when unchanged)
        return RenderedJSON(represent(kind, row, {"changed": decision.changed,
                                                  "event_id": decision.event_id}),
                            status_code=201 if decision.created else 200, headers=headers)

    @api.post("", status_code=201, openapi_extra={"requestBody": request_body(kind)},
              summary=f"Create a {kind.value} from a manifest",
              responses={201: {"model": models.written, "description": "created"},
                         200: {"model": models.written, "description": "the same manifest"
                               " was created already: nothing changed"}})
    async def create(request: Request, id: Annotated[str | None, Query(
            pattern=ID_PATTERN, description="the id to give; derived when absent")] = None,
    ) -> JSONResponse:
        return await write(request, id, WriteMode.create, None)

    @api.put("/{entity_id}", openapi_extra={"requestBody": request_body(kind)},
             summary=f"Replace a {kind.value} (If-Match required)",
             responses={200: {"model": models.written}})
    async def replace(request: Request, entity_id: str,
                      if_match: Annotated[str | None, Header()] = None) -> JSONResponse:
        return await write(request, entity_id, WriteMode.replace, if_match)

    @api.delete("/{entity_id}", summary=f"Delete a {kind.value}",
                responses={200: {"model": Deleted}})
    async def delete(request: Request, entity_id: str,
                     if_match: Annotated[str | None, Header()] = None) -> JSONResponse:
        return await write(request, entity_id, WriteMode.delete, if_match)

    @api.get("/{entity_id}", summary=f"One {kind.value}, normalized, with its manifest",
             responses={200: {"model": models.read}})
    async def get_one(entity_id: str) -> JSONResponse:
        _check_id(entity_id)
        row = await store.get(kind, entity_id)
        if row is None:
            raise ApiError(404, "not_found", f"no {kind.value} {entity_id!r}", "id")
        manifest = {"media_type": row["media_type"], "content": row["manifest"]}
        return RenderedJSON(represent(kind, row, {"manifest": manifest}),
                            headers={"ETag": _etag(row["version"])})

    @api.get("", summary=f"List {plural} with filters and cursor pagination",
             responses={200: {"model": models.page}})
    async def list_(
        process: str | None = None, material: str | None = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
        owner: Annotated[str | None, Query(max_length=64)] = None,
        id: Annotated[list[str] | None, Query(max_length=200, description=(
            "only these ids (repeat the parameter): a page naming the designs a match"
            " list holds asks once, not once per design"))] = None,
        near: Annotated[str | None, Query(description="lat,lon")] = None,
        radius_km: Annotated[float | None, Query(gt=0, le=20_100)] = None,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> JSONResponse:
        filters = Filters(
            processes=expand("process", process) if process else None,
            materials=expand("material", material) if material else None,
            text=q or None, owner=owner, ids=_ids(id), **_near(near, radius_km, kind))
        after = None
        if cursor:
            try:
                after = decode_cursor(cursor)
            except ValueError:
                raise ApiError(422, "invalid", "not a cursor this API gave", "cursor") from None
        rows, next_cursor = await store.list(kind, filters, after=after, limit=limit)
        items = [represent(kind, r, {"distance_km": round(r["distance_km"], 3)}
                           if r["distance_km"] is not None else {}) for r in rows]
        return RenderedJSON(f'{{"items":[{",".join(items)}],'
                            f'"next_cursor":{json.dumps(next_cursor)}}}')

    return api


class RenderedJSON(Response):
    """A body that is JSON text already (see `represent`)."""

    media_type = "application/json"


async def read_body(request: Request, readers: ReaderPool, kind: EntityKind | None,
                    entity_id: str | None, key_id: str, body_timeout_s: float) -> Prepared:
    """Parsed and normalized in a reader child: off the event loop, within its CPU,
    wall-time and memory bounds (past them 422 or 413, never a stalled loop), within
    the key's share of the readers."""
    media_type = request.headers.get("content-type")
    format_of(media_type)  # 415 before the body is read
    try:
        async with asyncio.timeout(body_timeout_s):
            raw = await request.body()
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the body did not arrive within"
                       f" {body_timeout_s:g} s", "body") from None
    try:
        prepared: Prepared = await readers.call(kind, raw, media_type, entity_id,
                                                tenant=key_id)
    except Exceeded as exc:
        status, code = (413, "too_large") if exc.what == "memory" else (422, "too_complex")
        raise ApiError(status, code, f"the document cannot be read within the reader's"
                       f" limits: {exc}", "body") from None
    except (Busy, ReaderLost):
        raise ApiError(503, "busy", "no document reader could take it now; retry after"
                       " the time in Retry-After", None, {"Retry-After": "1"}) from None
    return prepared


def validation_router(auth: Authenticator, readers: ReaderPool,
                      body_timeout_s: float) -> APIRouter:
    """POST /v1/validate: what a write would store, stores nothing. A key is needed (a
    reader's time is spent on it) but any organization's will do."""
    api = APIRouter(prefix="/v1", tags=["validation"], responses=ERROR_RESPONSES)

    @api.post("/validate", openapi_extra={"requestBody": request_body(None)},
              summary="Read a manifest as a write would, and report; nothing is stored",
              responses={200: {"model": Report}})
    async def validate(request: Request, kind: Annotated[EntityKind | None, Query(
            description="design or facility; by default the document says")] = None,
    ) -> JSONResponse:
        try:
            key = await auth.verify(request)
        except ApiError as exc:
            raise closing(exc) from None
        prepared = await read_body(request, readers, kind, None, key.key_id, body_timeout_s)
        return JSONResponse(report(prepared.entity))

    return api


def represent(kind: EntityKind, row: asyncpg.Record, extra: dict[str, Any]) -> str:
    """An entity as the API shows it. The normalized entity is spliced in as the JSON text
    PostgreSQL holds: decoding and re-encoding it cost more than the rest of a write."""
    meta = {"id": row["id"], "version": row["version"], "owner": row["owner"],
            "created_at": row["created_at"].isoformat(),
            "updated_at": row["updated_at"].isoformat()} | extra
    return f'{json.dumps(meta)[:-1]},"{kind.value}":{row["data_json"] or "null"}}}'



def _near(near: str | None, radius_km: float | None, kind: EntityKind) -> dict[str, Any]:
    origin = parse_near(near, radius_km)
    if origin is None:
        return {}
    if kind is not EntityKind.facility:
        raise ApiError(422, "invalid", "near= filters facilities only", "near")
    return {"near": origin[:2], "radius_km": origin[2]}



def _ids(ids: list[str] | None) -> list[str] | None:
    if not ids:
        return None
    for entity_id in ids:
        if not _ID.match(entity_id):
            raise ApiError(422, "invalid", "ids are 1 to 64 of A-Z, a-z, 0-9, _ and -", "id")
    return ids


def _check_id(entity_id: str) -> None:
    if not _ID.match(entity_id):
        raise InvalidInput("ids are 1 to 64 of A-Z, a-z, 0-9, _ and -", field="id")


def _version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    match = _ETAG.match(if_match)
    if match is None:
        raise ApiError(412, "precondition_failed", "If-Match must be an ETag this API gave",
                       "If-Match")
    return int(match.group(1))


def _etag(version: int) -> str:
    return f'"{version}"'
