"""`makelocal org ...` and `makelocal key ...`: organizations and their API keys, in the
registry's database (of the stack `up` runs with the data directory, or the environment's).
A key's secret is printed once, when it is made; afterwards only its id exists."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from services.registry.store import Store


def database_of(data_dir: Path) -> str:
    """The database of the stack `up` runs with this data directory, or the environment's."""
    from makelocal.stack import running_stack
    from services.registry.settings import RegistrySettings

    return running_stack(data_dir).get("database_url", RegistrySettings().database_url)


@contextlib.asynccontextmanager
async def registry_store(database_url: str) -> AsyncIterator[Store]:
    """The registry's store on one connection (its schema made first if need be)."""
    from services.common import db
    from services.registry.settings import RegistrySettings

    schema = RegistrySettings().registry_db_schema
    await db.migrate(database_url, schema, "services.registry")
    pool = await db.create_pool(database_url, schema, min_size=1, max_size=1)
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def org_create(name: str, data_dir: Path) -> int:
    async with registry_store(database_of(data_dir)) as store:
        org_id, key = await store.create_organization(name)
    print(f"organization {org_id} ({name})")
    print(f"API key (shown once, store it now): {key}")
    return 0


async def org_list(data_dir: Path) -> int:
    async with registry_store(database_of(data_dir)) as store:
        rows = await store.organizations()
    for row in rows:
        print(f"{row['id']}  {row['live_keys']} live key(s)  created"
              f" {row['created_at']:%Y-%m-%d}  {row['name']}")
    return 0


async def key_create(org_id: str, data_dir: Path) -> int:
    async with registry_store(database_of(data_dir)) as store:
        key = await store.create_key(org_id)
    if key is None:
        print(f"makelocal: no organization {org_id!r} (makelocal org list)")
        return 1
    print(f"API key (shown once, store it now): {key}")
    return 0


async def key_list(org_id: str, data_dir: Path) -> int:
    async with registry_store(database_of(data_dir)) as store:
        rows = await store.keys_of(org_id)
    if not rows:
        print(f"makelocal: no keys for {org_id!r}")
        return 1
    for row in rows:
        state = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "live"
        print(f"{row['key_id']}  created {row['created_at']:%Y-%m-%d %H:%M}  {state}")
    return 0


async def key_revoke(key_id: str, data_dir: Path) -> int:
    async with registry_store(database_of(data_dir)) as store:
        revoked = await store.revoke_key_id(key_id)
    print(f"key {key_id} revoked (writes with it are refused at once)" if revoked else
          f"makelocal: no live key {key_id!r}")
    return 0 if revoked else 1
