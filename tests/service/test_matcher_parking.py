"""A REGISTRY message that is not a registry event (undecodable JSON, another shape, wrong
types, under another entity's subject) is parked: counted, logged with its stream
sequence, kept in the checkpoint bucket as `parked.<seq>`, and the partition goes on."""

from __future__ import annotations

import logging
import uuid

import httpx
import nats
import orjson
import pytest

from contracts.events import EntityKind, new_event
from contracts.models import Facility
from services.matcher.settings import MatcherSettings
from tests.conftest import auth
from tests.support.builders import design_doc, facility_doc
from tests.support.helpers import (
    JSON,
    InProcess,
    InProcessMatcher,
    eventually,
    match_events,
    metric,
    reduce_matches,
    wait_ready,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


def garbage() -> list[tuple[str, bytes]]:
    """(subject, payload) of messages no registry writes."""
    valid = orjson.loads(new_event(EntityKind.facility, entity_id="g5", version=1, owner=None,
                                   data=Facility(id="g5", name="G5")).model_dump_json())
    return [
        ("registry.facility.g1", b"\x00\xff{not json"),
        ("registry.design.g2", b'["a", "list"]'),
        ("registry.facility.g3", orjson.dumps({"type": "facility.upserted", "hello": 1})),
        ("registry.facility.g4", orjson.dumps(valid | {"entity_id": "g4", "version": "two"})),
        # our shape, but a place that is not a number: would reach the index
        ("registry.facility.g5", orjson.dumps(valid | {"data": valid["data"] | {
            "location": {"lat": "north", "lon": None}}})),
        ("registry.facility.g6", orjson.dumps(valid)),  # g5's event under g6's subject
    ]


async def test_malformed_registry_messages_are_parked_and_the_valid_ones_matched(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        matcher_settings: MatcherSettings, caplog: pytest.LogCaptureFixture) -> None:
    key = auth(org[1]) | JSON
    nats_url = registry.settings.nats_url
    caplog.set_level(logging.ERROR, "services.matcher.consumer")
    junk = garbage()
    async with InProcessMatcher(matcher_settings) as matcher, httpx.AsyncClient(
            base_url=matcher.url) as http:
        await wait_ready(matcher.url)
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            for i in range(3):
                await client.post(f"/v1/facilities?id=f{i}", content=facility_doc(f"F{i}", ["FDM"]),
                                  headers=key)
                # interleaved with the registry's events: garbage in the same batches
                for subject, payload in junk[2 * i:2 * i + 2]:
                    await js.publish(subject, payload)
            await client.post("/v1/designs?id=d0", content=design_doc("D0", ["3DP"]), headers=key)
        finally:
            await nc.close()
        pairs = {("d0", f"f{i}") for i in range(3)}

        async def all_matched() -> bool:
            return await reduce_matches(nats_url) == pairs

        await eventually(all_matched, timeout=20)
        assert await metric(http, "makelocal_matcher_parked_total") == len(junk)
        assert await metric(http, "makelocal_matcher_batch_failures_total") == 0
        assert (await http.get("/readyz")).status_code == 200
        # the partition went on: a later change is matched as well
        await client.post("/v1/designs?id=d1", content=design_doc("D1", ["3DP"]), headers=key)

        async def later_matched() -> bool:
            return len(await reduce_matches(nats_url)) == 6

        await eventually(later_matched, timeout=20)
        assert len(await match_events(nats_url)) == 6

    parked = [r for r in caplog.records if r.getMessage() == "malformed REGISTRY message parked"]
    assert sorted(r.subject for r in parked) == sorted(s for s, _ in junk)  # type: ignore[attr-defined]
    seqs = sorted(r.seq for r in parked)  # type: ignore[attr-defined]
    assert all(isinstance(s, int) and s > 0 for s in seqs)
    # each is a dead letter in the partition's bucket, under its stream sequence
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(matcher_settings.bucket)
        letters = [orjson.loads((await kv.get(f"parked.{s}")).value) for s in seqs]
    finally:
        await nc.close()
    assert {(x["seq"], x["subject"]) for x in letters} == {
        (r.seq, r.subject) for r in parked}  # type: ignore[attr-defined]
    assert "lat" in next(x for x in letters if x["subject"].endswith("g5"))["error"]

    # a matcher with no checkpoint builds its index from REGISTRY, garbage and all
    fresh = matcher_settings.model_copy(update={"matcher_bucket": f"fresh{uuid.uuid4().hex[:8]}"})
    async with InProcessMatcher(fresh) as matcher, httpx.AsyncClient(
            base_url=matcher.url) as http:
        await wait_ready(matcher.url)
        assert await metric(http, "makelocal_matcher_parked_total") == len(junk)
        found = (await http.get("/v1/designs/d0/facilities")).json()["matches"]
        assert sorted(m["facility"] for m in found) == ["f0", "f1", "f2"]
