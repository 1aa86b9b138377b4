"""Nothing acknowledged is lost, nothing published twice: the relay killed with SIGKILL at
each step, and NATS down while clients write. Real processes, real NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import httpx
import pytest

from makelocal.embedded import NatsServer, free_port
from services.registry.settings import RegistrySettings
from tests.conftest import auth
from tests.support.builders import facility_doc
from tests.support.helpers import InProcessRegistry, ServiceProcess, eventually, stream_messages

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def outbox_rows(settings: RegistrySettings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetch(
            f'SELECT event_id, published_at FROM "{settings.registry_db_schema}".outbox'
            " ORDER BY position")
    finally:
        await conn.close()


async def write_without_relay(registry_env: dict[str, str], tmp_path: Path, org_key: str,
                              count: int) -> None:
    api = ServiceProcess(registry_env | {"MAKELOCAL_REGISTRY_RELAY": "false"},
                          tmp_path / "api.log").start()
    try:
        async with httpx.AsyncClient(base_url=api.url) as client:
            for i in range(count):
                response = await client.post(
                    f"/v1/facilities?id=lab-{i}",
                    content=facility_doc(f"Lab {i}", ["3D printing"]),
                    headers=auth(org_key) | {"Content-Type": "application/json"})
                assert response.status_code == 201
    finally:
        api.stop()


async def relay_killed_at(point: str, registry_env: dict[str, str], tmp_path: Path,
                          settings: RegistrySettings) -> ServiceProcess:
    """A relay run until it SIGKILLs itself at `point`; nothing is marked published."""
    relay = ServiceProcess(registry_env, tmp_path / "relay.log", "registry-relay")
    relay.start(MAKELOCAL_CRASH_AT=point)
    assert await relay.wait_dead() == -signal.SIGKILL
    assert all(row["published_at"] is None for row in await outbox_rows(settings))
    return relay


async def all_published(settings: RegistrySettings) -> bool:
    return all(r["published_at"] for r in await outbox_rows(settings))


async def test_relay_killed_after_commit_before_publish_publishes_once_on_restart(
        settings: RegistrySettings, registry_env: dict[str, str], org: tuple[str, str],
        tmp_path: Path) -> None:
    await write_without_relay(registry_env, tmp_path, org[1], 3)
    relay = await relay_killed_at("relay.before_publish", registry_env, tmp_path, settings)
    assert await stream_messages(settings.nats_url) == []

    relay.start()
    try:
        await eventually(lambda: all_published(settings))
        messages = await stream_messages(settings.nats_url)
        rows = await outbox_rows(settings)
        assert [m["event_id"] for m in messages] == [str(r["event_id"]) for r in rows]
        assert [m["_seq"] for m in messages] == [1, 2, 3]  # no second publish of anything
    finally:
        relay.stop()


async def test_relay_killed_after_puback_before_marking_is_deduplicated(
        settings: RegistrySettings, registry_env: dict[str, str], org: tuple[str, str],
        tmp_path: Path) -> None:
    await write_without_relay(registry_env, tmp_path, org[1], 2)
    relay = await relay_killed_at("relay.after_puback", registry_env, tmp_path, settings)
    first = await stream_messages(settings.nats_url)
    assert len(first) == 2

    relay.start()
    try:
        await eventually(lambda: all_published(settings))
        again = await stream_messages(settings.nats_url)
        # The republish carried the same Nats-Msg-Id: JetStream kept the first copy only.
        assert [(m["event_id"], m["_seq"]) for m in again] == [
            (m["event_id"], m["_seq"]) for m in first]
    finally:
        relay.stop()


async def test_writes_succeed_while_nats_is_down_and_arrive_in_order_after(
        settings: RegistrySettings, store, org: tuple[str, str], tmp_path: Path) -> None:
    own_nats = NatsServer(tmp_path / "nats", free_port()).start()
    try:
        own = settings.model_copy(update={"nats_url": own_nats.url})
        async with InProcessRegistry(own) as registry, httpx.AsyncClient(
                base_url=registry.url) as client:
            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready)
            own_nats.kill()
            statuses = []
            for i in range(20):
                response = await client.post(
                    f"/v1/facilities?id=down-{i:02d}",
                    content=facility_doc(f"Lab {i}", ["3D printing"]),
                    headers=auth(org[1]) | {"Content-Type": "application/json"})
                statuses.append(response.status_code)
            assert statuses == [201] * 20
            assert (await client.get("/readyz")).status_code == 503
            await asyncio.sleep(0.5)
            own_nats.start()

            async def all_arrived() -> list:
                messages = await stream_messages(own_nats.url)
                return messages if len(messages) == 20 else []

            messages = await eventually(all_arrived, timeout=30)
            assert [m["entity_id"] for m in messages] == [f"down-{i:02d}" for i in range(20)]
    finally:
        own_nats.stop()


async def test_a_standby_relay_takes_over_when_the_active_one_is_killed(
        settings: RegistrySettings, registry_env: dict[str, str], org: tuple[str, str],
        tmp_path: Path) -> None:
    async def published(count: int) -> bool:
        rows = await outbox_rows(settings)
        return len(rows) == count and all(r["published_at"] for r in rows)

    active = ServiceProcess(registry_env, tmp_path / "a.log", "registry-relay").start()
    standby = None
    try:
        await write_without_relay(registry_env, tmp_path, org[1], 10)
        await eventually(lambda: published(10))
        standby = ServiceProcess(registry_env, tmp_path / "b.log", "registry-relay").start()
        await asyncio.sleep(0.5)  # the standby is polling for the lock now
        active.proc.kill()  # type: ignore[union-attr]
        await active.wait_dead()
        api = ServiceProcess(registry_env | {"MAKELOCAL_REGISTRY_RELAY": "false"},
                              tmp_path / "api.log").start()
        try:
            async with httpx.AsyncClient(base_url=api.url) as client:
                for i in range(10, 25):
                    response = await client.post(
                        f"/v1/facilities?id=lab-{i}",
                        content=facility_doc(f"Lab {i}", ["3D printing"]),
                        headers=auth(org[1]) | {"Content-Type": "application/json"})
                    assert response.status_code == 201
        finally:
            api.stop()
        await eventually(lambda: published(25), timeout=30)
        messages = await stream_messages(settings.nats_url)
        assert len(messages) == 25 and messages[-1]["_seq"] == 25
    finally:
        active.stop()
        if standby is not None:
            standby.stop()
