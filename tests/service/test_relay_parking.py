"""The relay never stops for one event: an event that can never be published is parked
(kept with the reason, counted, shown) and the rows after it go on; a leader that cannot
publish says so on /readyz; published rows are pruned after the retention."""

from __future__ import annotations

import httpx
import nats
import pytest
from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NoStreamResponseError

from contracts.events import (
    REGISTRY_DUPLICATE_WINDOW_S,
    REGISTRY_STREAM,
    REGISTRY_SUBJECTS,
)
from makelocal.status import COLUMNS, row
from services.common import nats as nats_util
from services.registry.relay import permanent_reason
from services.registry.settings import RegistrySettings
from services.registry.store import Store
from tests.conftest import auth, clean_streams_now
from tests.support.builders import design_toml, write_design
from tests.support.helpers import (
    TOML,
    InProcessRegistry,
    eventually,
    metric,
    registry_rows,
    stream_messages,
    wait_ready,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_an_event_too_large_for_nats_is_parked_and_the_rest_published(
        settings: RegistrySettings, store: Store) -> None:
    big_org = await store.create_organization("Big Lab")
    _, other = await store.create_organization("Other Lab")
    # Written while the limit was larger (before this check existed, or before the NATS
    # server's max_payload was lowered): the outbox holds an event NATS will not take.
    store.max_event_bytes = 10 * 1024 * 1024
    await write_design(store, other, "before", design_toml("Before"))
    await write_design(store, big_org[1], "huge", design_toml("Huge", 2000, 500))
    for i in range(5):
        await write_design(store, other, f"after-{i}", design_toml(f"After {i}"))

    async with InProcessRegistry(settings) as registry, httpx.AsyncClient(
            base_url=registry.url, timeout=30) as client:
        async def six() -> list:
            messages = await stream_messages(settings.nats_url)
            return messages if len(messages) == 6 else []

        messages = await eventually(six, timeout=10)
        assert [m["entity_id"] for m in messages] == ["before"] + [
            f"after-{i}" for i in range(5)]

        parked = await registry_rows(settings, "SELECT * FROM outbox_parked")
        assert [(p["entity_id"], p["version"]) for p in parked] == [("huge", 1)]
        assert "max_payload" in parked[0]["reason"] and parked[0]["parked_at"]
        assert len(parked[0]["payload"]) > 1024 * 1024
        unpublished = await registry_rows(settings,
                                          "SELECT * FROM outbox WHERE published_at IS NULL")
        assert unpublished == []

        assert await metric(client, "makelocal_registry_outbox_parked_total") == 1

        async def gauge() -> bool:
            return await metric(client, "makelocal_registry_outbox_parked_rows") == 1

        await eventually(gauge, timeout=10)
        # `makelocal status` shows them
        cells = row("registry", "ready", {"makelocal_registry_outbox_parked_rows": 1.0})
        assert cells[2 + list(COLUMNS).index("parked events")] == "1"

        # The owner fixes the design: the new version is published, past the parked one
        fixed = await client.put("/v1/designs/huge", content=design_toml("Huge, smaller"),
                                 headers=auth(big_org[1]) | TOML | {"If-Match": '"1"'})
        assert fixed.status_code == 200, fixed.text[:300]

        async def fixed_published() -> list:
            return [m for m in await stream_messages(settings.nats_url)
                    if m["entity_id"] == "huge"]

        assert [m["version"] for m in await eventually(fixed_published)] == [2]
        assert (await client.get("/readyz")).status_code == 200


async def test_which_failures_are_permanent() -> None:
    assert permanent_reason(MaxPayloadError())
    too_large = APIError(code=400, err_code=10054, description="message size exceeds maximum")
    assert permanent_reason(too_large)
    # NATS away, a timeout, no stream (yet): the next attempt may succeed
    assert permanent_reason(NatsTimeout()) is None
    assert permanent_reason(NoStreamResponseError()) is None
    assert permanent_reason(APIError(code=503, err_code=10008)) is None


async def test_a_leader_that_cannot_publish_is_not_ready(
        settings: RegistrySettings, store: Store) -> None:
    _, key = await store.create_organization("Lab")
    own = settings.model_copy(update={"registry_outbox_stale_s": 1.0})
    async with InProcessRegistry(own) as registry, httpx.AsyncClient(
            base_url=registry.url, timeout=30) as client:
        await wait_ready(registry.url)
        # NATS stays connected, but every publish is now refused (no stream takes the
        # subject): the relay retries, and the events wait.
        await clean_streams_now(settings.nats_url)
        created = await client.post("/v1/designs?id=waits", content=design_toml("Waits"),
                                    headers=auth(key) | TOML)
        assert created.status_code == 201

        async def not_ready() -> httpx.Response | None:
            response = await client.get("/readyz")
            return response if response.status_code == 503 else None

        response = await eventually(not_ready, timeout=10)
        checks = response.json()["checks"]
        assert checks["nats"] == "ok" and checks["database"] == "ok"
        assert checks["publishing"] == "unavailable: PublisherStuck"

        # A failure a retry may cure is retried, never parked: with the stream back, the
        # event goes out and the leader is ready again
        nc = await nats.connect(settings.nats_url)
        try:
            await nats_util.ensure_stream(nc, nats_util.compacted_stream(
                REGISTRY_STREAM, [REGISTRY_SUBJECTS], REGISTRY_DUPLICATE_WINDOW_S))
        finally:
            await nc.close()
        await wait_ready(registry.url, timeout=15)
        assert [m["entity_id"] for m in await stream_messages(settings.nats_url)] == ["waits"]
        assert await registry_rows(own, "SELECT 1 FROM outbox_parked") == []


async def test_published_rows_are_pruned_after_the_retention(
        settings: RegistrySettings, store: Store) -> None:
    _, key = await store.create_organization("Lab")
    own = settings.model_copy(update={"registry_outbox_retention_s": 1.0})
    async with InProcessRegistry(own) as registry, httpx.AsyncClient(
            base_url=registry.url, timeout=30) as client:
        await wait_ready(registry.url)
        for i in range(3):
            response = await client.post(f"/v1/designs?id=d-{i}",
                                         content=design_toml(f"D {i}"),
                                         headers=auth(key) | TOML)
            assert response.status_code == 201

        async def pruned() -> bool:
            return await registry_rows(own, "SELECT 1 FROM outbox") == []

        await eventually(pruned, timeout=10)
        assert len(await stream_messages(settings.nats_url)) == 3
        assert await metric(client, "makelocal_registry_outbox_pruned_total") == 3
        # An unpublished row is never pruned, however old
        await clean_streams_now(settings.nats_url)
        await client.post("/v1/designs?id=waits", content=design_toml("Waits"),
                          headers=auth(key) | TOML)
        await eventually(lambda: _older_than(own, 2.0), timeout=10)
        waiting = await registry_rows(own, "SELECT 1 FROM outbox WHERE published_at IS NULL")
        assert len(waiting) == 1


async def _older_than(settings: RegistrySettings, seconds: float) -> bool:
    rows = await registry_rows(settings, "SELECT extract(epoch FROM now() - created_at) AS age"
                                         " FROM outbox")
    return bool(rows) and float(rows[0]["age"]) > seconds
