"""PostgreSQL through asyncpg: a pool bound to one schema, and numbered migrations applied
at start under an advisory lock (several replicas may start at once)."""

from __future__ import annotations

import json
import re
from importlib import resources

import asyncpg

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def checked_schema(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


def _encode_json(value: object) -> str:
    # Text that is already JSON goes as it is: entities are serialized once, by pydantic.
    return value if isinstance(value, str) else json.dumps(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_encode_json, decoder=json.loads,
                              schema="pg_catalog")


class PooledConnection(asyncpg.Connection):
    """Our pooled connections keep no session state (no LISTEN, no session locks, settings
    only at connect), so the reset query asyncpg sends on every release is a wasted round
    trip on every request."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(dsn: str, schema: str, *, min_size: int = 2,
                      max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection,
        connection_class=PooledConnection,
        server_settings={"search_path": checked_schema(schema)},
    )


async def connect(dsn: str, schema: str, *, settings: dict[str, str] | None = None,
                  command_timeout: float | None = None) -> asyncpg.Connection:
    """One dedicated connection (LISTEN and session advisory locks need their own), with
    more server `settings` and a default timeout of every query when given."""
    conn = await asyncpg.connect(
        dsn, command_timeout=command_timeout,
        server_settings={"search_path": checked_schema(schema)} | (settings or {}))
    await _init_connection(conn)
    return conn


async def migrate(dsn: str, schema: str, package: str) -> list[int]:
    """Apply `package`'s migrations/NNN_name.sql files not yet applied; returns those applied."""
    checked_schema(schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"migrate:{schema}")
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for number, name, sql in _migrations(package):
            if number in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name)
            applied.append(number)
        return applied
    finally:
        await conn.close()


def _migrations(package: str) -> list[tuple[int, str, str]]:
    folder = resources.files(package).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d+)_(.+)\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    return sorted(found)
