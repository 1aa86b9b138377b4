"""Every change the registry accepts fits in one NATS message: a document whose event
would be larger than the server's max_payload is refused with 413 (nothing stored, no
event), and cannot hold up the events of anyone else."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from makelocal.embedded import free_port, nats_binary, stop_process, wait_for_port
from services.registry.settings import RegistrySettings
from services.registry.store import Store
from services.registry.writes import EVENT_HEADROOM_BYTES
from tests.conftest import auth
from tests.support.builders import design_toml
from tests.support.helpers import TOML, InProcessRegistry, eventually, stream_messages, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def outbox_count(settings: RegistrySettings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetchval(f'SELECT count(*) FROM "{settings.registry_db_schema}".outbox')
    finally:
        await conn.close()


@pytest.fixture
def small_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server of its own whose INFO announces a max_payload of 64 KiB."""
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f'port: {port}\nhost: "127.0.0.1"\nmax_payload: 65536\n'
                    f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n')
    proc = subprocess.Popen([nats_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, 15, proc)
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop_process(proc)


async def test_an_oversized_document_is_refused_and_others_are_published_meanwhile(
        settings: RegistrySettings, store: Store) -> None:
    big_org = await store.create_organization("Big Lab")
    other_org = await store.create_organization("Other Lab")
    # About 1.06 MB of TOML (under the 2 MiB body limit), about 1.15 MB as an event
    big = design_toml("Huge", 2000, 500)
    assert 1_000_000 < len(big) < 2 * 1024 * 1024
    async with InProcessRegistry(settings) as registry, httpx.AsyncClient(
            base_url=registry.url, timeout=30) as client:
        await wait_ready(registry.url)

        async def post_others() -> list[int]:
            statuses = []
            for i in range(10):
                response = await client.post(f"/v1/designs?id=normal-{i}",
                                             content=design_toml(f"Normal {i}"),
                                             headers=auth(other_org[1]) | TOML)
                statuses.append(response.status_code)
            return statuses

        refused, statuses = await asyncio.gather(
            client.post("/v1/designs?id=huge", content=big, headers=auth(big_org[1]) | TOML),
            post_others())
        assert statuses == [201] * 10

        assert refused.status_code == 413, refused.text[:300]
        error = refused.json()["error"]
        limit = 1024 * 1024 - EVENT_HEADROOM_BYTES  # the test server's default max_payload
        assert error["code"] == "event_too_large" and error["field"] == "body"
        assert error["limit"] == limit
        assert f"{limit:,} bytes" in error["message"] and "max_payload" in error["message"]
        size = int(error["message"].split(" would be ")[1].split(" bytes")[0].replace(",", ""))
        assert size > limit

        # Nothing of the refused one is stored; every other one is on REGISTRY promptly.
        assert (await client.get("/v1/designs/huge")).status_code == 404
        assert await outbox_count(settings) == 10

        async def all_ten() -> list:
            messages = await stream_messages(settings.nats_url)
            return messages if len(messages) == 10 else []

        messages = await eventually(all_ten, timeout=5)
        assert sorted(m["entity_id"] for m in messages) == [f"normal-{i}" for i in range(10)]


async def test_the_limit_is_the_nats_servers_max_payload(
        settings: RegistrySettings, store: Store, small_nats: str) -> None:
    _, key = await store.create_organization("Lab")
    own = settings.model_copy(update={"nats_url": small_nats})
    limit = 65536 - EVENT_HEADROOM_BYTES
    async with InProcessRegistry(own) as registry, httpx.AsyncClient(
            base_url=registry.url, timeout=30) as client:
        await wait_ready(registry.url)
        fits = await client.post("/v1/designs?id=fits", content=design_toml("Fits", 100, 300),
                                 headers=auth(key) | TOML)
        assert fits.status_code == 201, fits.text[:300]
        too_big = await client.post("/v1/designs?id=too-big",
                                    content=design_toml("Too big", 100, 900),
                                    headers=auth(key) | TOML)
        assert too_big.status_code == 413
        assert too_big.json()["error"]["limit"] == limit
        # A later write goes through and is published: nothing is stuck behind the refusal
        after = await client.post("/v1/designs?id=after", content=design_toml("After"),
                                  headers=auth(key) | TOML)
        assert after.status_code == 201

        async def both() -> list:
            messages = await stream_messages(small_nats)
            return messages if len(messages) == 2 else []

        assert [m["entity_id"] for m in await eventually(both, timeout=10)] == ["fits", "after"]


async def test_a_configured_limit_below_the_servers_applies(
        settings: RegistrySettings, store: Store) -> None:
    _, key = await store.create_organization("Lab")
    own = settings.model_copy(update={"registry_max_event_bytes": 20_000})
    async with InProcessRegistry(own) as registry, httpx.AsyncClient(
            base_url=registry.url, timeout=30) as client:
        await wait_ready(registry.url)
        refused = await client.put("/v1/designs/x", content=design_toml("X", 50, 500),
                                   headers=auth(key) | TOML | {"If-Match": '"1"'})
        # a PUT of an entity that does not exist is 404, not a size question: POST it
        assert refused.status_code == 404
        refused = await client.post("/v1/designs?id=x", content=design_toml("X", 50, 500),
                                    headers=auth(key) | TOML)
        assert refused.status_code == 413 and refused.json()["error"]["limit"] == 20_000
        created = await client.post("/v1/designs?id=x", content=design_toml("X"),
                                    headers=auth(key) | TOML)
        assert created.status_code == 201
        # a replacement that would outgrow the limit is refused too; version 1 stays
        grown = await client.put("/v1/designs/x", content=design_toml("X", 50, 500),
                                 headers=auth(key) | TOML | {"If-Match": '"1"'})
        assert grown.status_code == 413
        assert (await client.get("/v1/designs/x")).json()["version"] == 1
        assert await outbox_count(settings) == 1
