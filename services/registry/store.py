"""The registry's SQL: organizations and keys, entities with their outbox rows (one
transaction per change), listing with filters, and the outbox as the relay reads it."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg

from contracts.events import EntityKind, new_event
from services.common import keys
from services.registry.entities import Prepared
from services.registry.writes import (
    DEFAULT_MAX_PAYLOAD,
    Current,
    Decision,
    WriteMode,
    WriteRefused,
    check_event_size,
    decide,
    event_limit,
)

EARTH_RADIUS_KM = 6371.0088
# What a response shows of an entity; `data` stays JSON text from PostgreSQL to the client.
COLUMNS = "id, owner, version, created_at, updated_at, data::text AS data_json"


@dataclass(frozen=True)
class Filters:
    processes: list[str] | None = None
    materials: list[str] | None = None
    text: str | None = None
    owner: str | None = None
    ids: list[str] | None = None
    near: tuple[float, float] | None = None
    radius_km: float | None = None


class Store:
    def __init__(self, pool: asyncpg.Pool, max_event_bytes: int | None = None) -> None:
        self.pool = pool
        # Events larger than this are refused before anything is stored: the app sets it
        # from the NATS server's max_payload once it has learned it.
        self.max_event_bytes = max_event_bytes or event_limit(DEFAULT_MAX_PAYLOAD)

    # organizations and keys

    async def create_organization(self, name: str) -> tuple[str, str]:
        """(organization id, API key); the key is returned here once and never again."""
        org_id = f"org_{secrets.token_hex(6)}"
        key = keys.issue()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO organizations (id, name) VALUES ($1, $2)",
                               org_id, name)
            await _insert_key(conn, org_id, key)
        return org_id, key.token

    async def organizations(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT o.id, o.name, o.created_at, count(k.key_id) FILTER (WHERE k.revoked_at IS"
            " NULL) AS live_keys FROM organizations o LEFT JOIN api_keys k ON k.org_id = o.id"
            " GROUP BY o.id ORDER BY o.created_at, o.id")

    async def create_key(self, org_id: str) -> str | None:
        """A new API key for an organization (returned here once), or None: no such one."""
        key = keys.issue()
        try:
            await _insert_key(self.pool, org_id, key)
        except asyncpg.ForeignKeyViolationError:
            return None
        return key.token

    async def keys_of(self, org_id: str) -> list[asyncpg.Record]:
        """Its keys by id (the secret is nowhere: only its hash is kept)."""
        return await self.pool.fetch(
            "SELECT key_id, created_at, revoked_at FROM api_keys WHERE org_id = $1"
            " ORDER BY created_at, key_id", org_id)

    async def revoke_key_id(self, key_id: str) -> bool:
        result = await self.pool.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
            key_id)
        return result.endswith(" 1")

    async def revoke_key(self, token: str) -> bool:
        parsed = keys.parse(token)
        if parsed is None:
            return False
        return await self.revoke_key_id(parsed[0])

    # entities

    async def get(self, kind: EntityKind, entity_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"SELECT {COLUMNS}, manifest, media_type FROM entities"
            " WHERE kind = $1 AND id = $2 AND NOT deleted", kind.value, entity_id)

    async def write(self, kind: EntityKind, entity_id: str, prepared: Prepared | None, *,
                    mode: WriteMode, key: tuple[str, str], expected_version: int | None,
                    trace_context: str | None = None) -> tuple[Decision, asyncpg.Record]:
        """Check the API key, then create, replace or delete one entity and queue its event,
        all in one transaction: a key revoked before the commit cannot write.
        `trace_context`: the write's, kept with the event for the relay (tracing.to_text)."""
        key_id, secret = key
        async with self.pool.acquire() as conn, conn.transaction():
            # The key and the entity's row lock in one round trip.
            row = await conn.fetchrow(
                "WITH k AS (SELECT org_id, secret_hash FROM api_keys"
                "  WHERE key_id = $3 AND revoked_at IS NULL),"
                " e AS (SELECT owner, version, deleted, content_hash FROM entities"
                "  WHERE kind = $1 AND id = $2 FOR UPDATE)"
                " SELECT k.org_id, k.secret_hash, e.owner, e.version, e.deleted, e.content_hash"
                " FROM k LEFT JOIN e ON true", kind.value, entity_id, key_id)
            if row is None or not keys.verify(secret, bytes(row["secret_hash"])):
                raise WriteRefused(401, "unauthorized", "the API key is not valid",
                                   "Authorization")
            owner = row["org_id"]
            current = Current(row["owner"], row["version"], row["deleted"],
                              row["content_hash"]) if row["owner"] is not None else None
            decision = decide(current, mode=mode, owner=owner, expected_version=expected_version,
                              content_hash=prepared.content_hash if prepared else None)
            if not decision.changed:
                return decision, await conn.fetchrow(
                    f"SELECT {COLUMNS} FROM entities WHERE kind = $1 AND id = $2",
                    kind.value, entity_id)
            event = new_event(kind, entity_id=entity_id, version=decision.version, owner=owner,
                              data=prepared.entity if prepared else None)
            payload = event.model_dump_json().encode()
            check_event_size(len(payload), self.max_event_bytes)
            outbox = (event.event_id, event.subject, payload, trace_context)
            if prepared is None:
                sql, values = _DELETE, (kind.value, entity_id, decision.version)
            else:
                lat, lon = prepared.position
                sql = _UPDATE if current is not None else _INSERT
                values = (kind.value, entity_id, decision.version, owner, prepared.entity.name,
                          prepared.data_json, prepared.manifest, prepared.media_type,
                          prepared.content_hash, prepared.processes, prepared.materials,
                          prepared.search_text, lat, lon)
            # The entity row and its outbox row in one statement: one round trip fewer.
            written = await conn.fetchrow(
                f"WITH e AS ({sql} RETURNING {COLUMNS}), o AS ("
                " INSERT INTO outbox (event_id, subject, entity_id, version, payload,"
                f" trace_context) VALUES (${len(values) + 1}, ${len(values) + 2}, $2, $3,"
                f" ${len(values) + 3}, ${len(values) + 4})) SELECT * FROM e",
                *values, *outbox)
            return dataclasses.replace(decision, event_id=str(event.event_id)), written

    async def list(self, kind: EntityKind, filters: Filters, *, after: str | None,
                   limit: int) -> tuple[list[asyncpg.Record], str | None]:
        where = ["kind = $1", "NOT deleted"]
        args: list[Any] = [kind.value]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if filters.processes:
            where.append(f"processes && {arg(filters.processes)}::text[]")
        if filters.materials:
            where.append(f"materials && {arg(filters.materials)}::text[]")
        if filters.text:
            where.append(f"search @@ websearch_to_tsquery('simple', {arg(filters.text)})")
        if filters.owner:
            where.append(f"owner = {arg(filters.owner)}")
        if filters.ids:
            where.append(f"id = ANY({arg(filters.ids)}::text[])")
        distance = "NULL::double precision"
        if filters.near is not None and filters.radius_km is not None:
            lat, lon = filters.near
            dlat = math.degrees(filters.radius_km / EARTH_RADIUS_KM)
            # The box prefilter uses the index; the haversine is the exact cut.
            coslat = max(math.cos(math.radians(lat)), 1e-6)
            dlon = min(180.0, dlat / coslat)
            where.append(f"lat BETWEEN {arg(lat - dlat)} AND {arg(lat + dlat)}")
            if dlon < 180:
                lo, hi = lon - dlon, lon + dlon
                where.append(f"(lon BETWEEN {arg(lo)} AND {arg(hi)}"
                             f" OR lon BETWEEN {arg(lo + 360)} AND {arg(hi + 360)}"
                             f" OR lon BETWEEN {arg(lo - 360)} AND {arg(hi - 360)})")
            distance = _haversine_sql(arg(lat), arg(lon))
            where.append(f"{distance} <= {arg(filters.radius_km)}")
        if after is not None:
            where.append(f"id > {arg(after)}")
        sql = (f"SELECT {COLUMNS}, {distance} AS distance_km FROM entities"
               f" WHERE {' AND '.join(where)} ORDER BY id LIMIT {arg(limit + 1)}")
        rows = await self.pool.fetch(sql, *args)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (encode_cursor(rows[-1]["id"]) if more and rows else None)

    # outbox, as the relay and the metrics see it

    async def outbox_backlog(self) -> tuple[int, float, int]:
        """(unpublished rows, age of the oldest in seconds, parked rows)."""
        row = await self.pool.fetchrow(
            "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0)"
            " AS age, (SELECT count(*) FROM outbox_parked) AS parked"
            " FROM outbox WHERE published_at IS NULL")
        return int(row["n"]), float(row["age"]), int(row["parked"])

    async def oldest_unpublished_age(self) -> float:
        """Seconds the first row in publishing order has waited (0: none waits)."""
        return float(await self.pool.fetchval(
            "SELECT coalesce(extract(epoch FROM now() - (SELECT created_at FROM outbox"
            " WHERE published_at IS NULL ORDER BY position LIMIT 1)), 0)"))


async def _insert_key(conn: asyncpg.Connection | asyncpg.Pool, org_id: str,
                      key: keys.IssuedKey) -> None:
    await conn.execute(
        "INSERT INTO api_keys (key_id, org_id, secret_hash) VALUES ($1, $2, $3)",
        key.key_id, org_id, key.secret_hash)


async def fetch_unpublished(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT position, event_id, subject, payload, trace_context FROM outbox"
        " WHERE published_at IS NULL ORDER BY position LIMIT $1", limit)


async def mark_published(conn: asyncpg.Connection, positions: list[int]) -> None:
    """After the PubAcks. The commit need not wait for the disk: if a database crash loses
    the mark, the relay publishes the rows again under the same Nats-Msg-Id and JetStream
    drops the copies, as after a relay crash between PubAck and mark."""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit TO off")
        await conn.execute("UPDATE outbox SET published_at = now() WHERE position = ANY($1)",
                           positions)


async def park(conn: asyncpg.Connection, position: int, reason: str) -> None:
    """Move one outbox row to outbox_parked: the relay goes on with the rows after it."""
    async with conn.transaction():
        await conn.execute(
            "WITH moved AS (DELETE FROM outbox WHERE position = $1 RETURNING *)"
            " INSERT INTO outbox_parked (position, event_id, subject, entity_id, version,"
            " payload, created_at, reason) SELECT position, event_id, subject, entity_id,"
            " version, payload, created_at, $2 FROM moved", position, reason)


async def prune_published(conn: asyncpg.Connection, older_than_s: float,
                          limit: int = 10_000) -> int:
    """Delete up to `limit` rows published more than `older_than_s` ago; how many went.
    In slices, so that a long backlog of old rows never holds one long transaction."""
    result = await conn.execute(
        "DELETE FROM outbox WHERE position IN (SELECT position FROM outbox"
        " WHERE published_at < now() - make_interval(secs => $1) LIMIT $2)",
        older_than_s, limit)
    return int(result.rsplit(" ", 1)[1])


_DELETE = (
    "UPDATE entities SET deleted = true, version = $3, data = NULL, manifest = NULL,"
    " content_hash = NULL, updated_at = now() WHERE kind = $1 AND id = $2")
_UPDATE = (
    "UPDATE entities SET version = $3, owner = $4, deleted = false, name = $5, data = $6,"
    " manifest = $7, media_type = $8, content_hash = $9, processes = $10, materials = $11,"
    " search = to_tsvector('simple', $12), lat = $13, lon = $14, updated_at = now()"
    " WHERE kind = $1 AND id = $2")
_INSERT = (
    "INSERT INTO entities (kind, id, version, owner, name, data, manifest, media_type,"
    " content_hash, processes, materials, search, lat, lon) VALUES ($1, $2, $3, $4, $5, $6,"
    " $7, $8, $9, $10, $11, to_tsvector('simple', $12), $13, $14)")


def _haversine_sql(lat: str, lon: str) -> str:
    return (f"(2 * {EARTH_RADIUS_KM} * asin(sqrt(power(sin(radians(lat - {lat}) / 2), 2)"
            f" + cos(radians({lat})) * cos(radians(lat))"
            f" * power(sin(radians(lon - {lon}) / 2), 2))))")


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor continues after; ValueError when it is not one of ours."""
    padded = cursor + "=" * (-len(cursor) % 4)
    data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    after = data.get("after") if isinstance(data, dict) else None
    if not isinstance(after, str):
        raise ValueError("not a cursor")
    return after
