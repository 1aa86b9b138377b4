"""The matcher against real NATS: live match events, the query API, and the invariant
(found/withdrawn alternate per pair; the pairs left found are exactly the matches of the
final registry state) through SIGKILL mid-fan-out and changes made while it was down."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from contracts.matches import MatchChange, MatchEvent
from services.matcher.settings import MatcherSettings
from tests.conftest import auth
from tests.support.builders import design_doc, facility_doc, post_fan_out
from tests.support.helpers import (
    JSON,
    InProcess,
    InProcessMatcher,
    ServiceProcess,
    eventually,
    match_events,
    reduce_matches,
    settled,
    stream_messages,
    wait_ready,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")



async def test_a_new_design_is_matched_and_a_closed_facility_withdrawn(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        matcher_settings: MatcherSettings, data_dir: Path) -> None:
    key = auth(org[1]) | JSON
    async with InProcessMatcher(matcher_settings) as matcher, httpx.AsyncClient(
            base_url=matcher.url) as query:
        await wait_ready(matcher.url)
        await client.post("/v1/facilities?id=paris", content=facility_doc(
            "Paris", ["FDM", "laser cutting"], materials=["PLA", "plywood"]), headers=key)
        await client.post("/v1/facilities?id=lyon", content=facility_doc(
            "Lyon", ["3D printing"], lat=45.76, lon=4.84), headers=key)
        await client.post("/v1/facilities?id=closed", content=facility_doc(
            "Closed", ["FDM"], status="Closed"), headers=key)
        ohloom = (data_dir / "okh" / "ohloom.okh.toml").read_bytes()
        await client.post("/v1/designs?id=ohloom", content=ohloom,
                          headers=auth(org[1]) | {"Content-Type": "application/toml"})
        await client.post("/v1/designs?id=clip", content=design_doc("Clip", ["3DP"], "PLA"),
                          headers=key)
        assert await settled(registry) == {("clip", "paris"), ("clip", "lyon")}

        changes = await stream_messages(registry.settings.nats_url, "MATCHES")
        for change in changes:  # every message is a valid MatchChange, with its id
            MatchChange.model_validate({k: v for k, v in change.items() if k[0] != "_"})
            assert change["_msg_id"] == change["message_id"]
        # one message per change that moved a match: the clip design found two at once
        [clip] = [c for c in changes if c["cause"]["entity_id"] == "clip"]
        assert clip["design"]["processes"] == ["3d-printing"]
        assert sorted(p["id"] for p in clip["found"]) == ["lyon", "paris"]
        events = await match_events(registry.settings.nats_url)
        for event in events:  # every pair rebuilds to a valid MatchEvent
            MatchEvent.model_validate({k: v for k, v in event.items() if k[0] != "_"})
        found = [e for e in events if e["facility_id"] == "paris"]
        assert found[0]["type"] == "matches.found"
        assert {r["kind"] for r in found[0]["explanation"]} == {"status", "process", "material"}
        assert found[0]["facility_lat"] == 48.85

        ranked = (await query.get("/v1/designs/clip/facilities",
                                  params={"near": "48.85,2.35", "radius_km": 1000})).json()
        assert [m["facility"] for m in ranked["matches"]] == ["paris", "lyon"]
        assert ranked["matches"][0]["score"] > ranked["matches"][1]["score"]
        assert [m["facility"] for m in ranked["near_misses"]] == ["closed"]
        assert ranked["near_misses"][0]["summary"] == "missing 1 of 3: status active"
        paris = (await query.get("/v1/facilities/paris/designs")).json()
        assert [m["design"] for m in paris["matches"]] == ["clip"]
        why = (await query.get("/v1/match", params={"design": "ohloom",
                                                    "facility": "paris"})).json()
        assert not why["matches"] and "cnc-machining" in why["summary"]
        missing = await query.get("/v1/designs/nope/facilities")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "design"

        current = await client.get("/v1/facilities/paris")
        await client.put("/v1/facilities/paris",
                         content=facility_doc("Paris", ["FDM"], status="Closed"),
                         headers=key | {"If-Match": current.headers["etag"]})
        assert await settled(registry) == {("clip", "lyon")}
        metrics = (await query.get("/metrics")).text
        assert "makelocal_matcher_matches_withdrawn_total 1.0" in metrics
        assert (await query.get("/readyz")).status_code == 200


async def test_sigkill_mid_fan_out_leaves_matches_exact_after_restart(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        matcher_env: dict[str, str], tmp_path: Path) -> None:
    key = auth(org[1]) | JSON
    # small pieces (about 40 pairs each), so that one change's fan-out takes several
    matcher_env = matcher_env | {"MAKELOCAL_MATCHER_PIECE_BYTES": "4096"}
    matcher = ServiceProcess(matcher_env, tmp_path / "matcher.log", "matcher").start(
        MAKELOCAL_CRASH_AT="matcher.mid_publish")
    await wait_ready(matcher.url)
    await post_fan_out(client, key)
    assert await matcher.wait_dead(30) == -signal.SIGKILL
    half = await reduce_matches(registry.settings.nats_url)
    assert 0 < len(half) < 80  # the fan-out was cut in the middle, between its pieces
    pieces = await stream_messages(registry.settings.nats_url, "MATCHES")
    assert 0 < len(pieces) < pieces[0]["pieces"]

    matcher.start()
    try:
        final = await settled(registry)
        assert len(final) == 80
        events = await match_events(registry.settings.nats_url)
        assert len(events) == 80  # replayed pieces were duplicates, dropped by JetStream
        pieces = await stream_messages(registry.settings.nats_url, "MATCHES")
        assert sorted(p["piece"] for p in pieces) == list(range(pieces[0]["pieces"]))
    finally:
        matcher.stop()


async def test_changes_made_while_the_matcher_was_down_are_reconciled(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        matcher_env: dict[str, str], tmp_path: Path) -> None:
    key = auth(org[1]) | JSON
    # a snapshot every 4 deltas: the restart reads a snapshot and the deltas after it
    matcher_env = matcher_env | {"MAKELOCAL_MATCHER_SNAPSHOT_EVERY": "4"}
    matcher = ServiceProcess(matcher_env, tmp_path / "matcher.log", "matcher").start()
    await wait_ready(matcher.url)
    try:
        for i in range(6):
            await client.post(f"/v1/facilities?id=f{i}",
                              content=facility_doc(f"F{i}", ["FDM", "CNC"]),
                              headers=key)
        for design_id, tsdc in (("d-print", ["3DP"]), ("d-cnc", ["CNC"]),
                                ("d-both", ["3DP", "CNC"])):
            await client.post(f"/v1/designs?id={design_id}", content=design_doc(design_id, tsdc),
                              headers=key)
        assert len(await settled(registry)) == 18
    finally:
        matcher.kill()
    # while it is down: one facility changes three times, a design is deleted
    for version, processes in ((1, ["FDM"]), (2, ["laser cutting"]), (3, ["CNC", "welding"])):
        await client.put("/v1/facilities/f0", content=facility_doc("F0", processes),
                         headers=key | {"If-Match": f'"{version}"'})
    await client.delete("/v1/designs/d-both", headers=auth(org[1]))
    matcher.start()
    try:
        final = await settled(registry)
        assert ("d-cnc", "f0") in final and ("d-print", "f0") not in final
        assert not any(d == "d-both" for d, _ in final)
        assert len(final) == 6 + 5
    finally:
        matcher.stop()


async def test_a_matcher_without_checkpoint_builds_silently_then_goes_live(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        matcher_settings: MatcherSettings) -> None:
    key = auth(org[1]) | JSON
    for i in range(5):
        await client.post(f"/v1/facilities?id=f{i}", content=facility_doc(f"F{i}", ["FDM"]),
                          headers=key)
    await client.post("/v1/designs?id=old", content=design_doc("Old", ["3DP"]), headers=key)
    await eventually(lambda: _count(registry.settings.nats_url, 6))
    async with InProcessMatcher(matcher_settings) as matcher, httpx.AsyncClient(
            base_url=matcher.url) as query:
        await wait_ready(matcher.url)
        assert len((await query.get("/v1/designs/old/facilities")).json()["matches"]) == 5
        await client.post("/v1/designs?id=new", content=design_doc("New", ["3DP"]), headers=key)

        old = {("old", f"f{i}") for i in range(5)}
        assert await settled(registry, silent=old) == {("new", f"f{i}") for i in range(5)} | old
        # ... yet MATCHES holds events for "new" only: "old" was indexed silently
        events = await match_events(registry.settings.nats_url)
        assert {e["design_id"] for e in events} == {"new"}


async def _count(nats_url: str, n: int) -> bool:
    return len(await stream_messages(nats_url)) == n


async def _scenario(registry: InProcess, key: str) -> set[str]:
    """A fixed sequence of writes; the ids of the match events it leads to."""
    headers = auth(key) | JSON
    async with httpx.AsyncClient(base_url=registry.url) as client:
        for i in range(12):
            processes = [["FDM"], ["laser cutting"], ["CNC", "FDM"]][i % 3]
            await client.post(f"/v1/facilities?id=f{i}", content=facility_doc(f"F{i}", processes),
                              headers=headers)
        for i in range(10):
            tsdc = [["3DP"], ["LAS"], ["CNC"], ["3DP", "CNC"]][i % 4]
            await client.post(f"/v1/designs?id=d{i}", content=design_doc(f"D{i}", tsdc),
                              headers=headers)
        await client.put("/v1/facilities/f2", content=facility_doc("F2", ["FDM"], status="Closed"),
                         headers=headers | {"If-Match": '"1"'})
        await client.delete("/v1/designs/d3", headers=auth(key))
    await settled(registry)
    return {e["event_id"] for e in await match_events(registry.settings.nats_url)}


async def test_two_partitions_emit_exactly_the_events_of_one_process(
        settings, store, matcher_settings: MatcherSettings, nats_server) -> None:
    from tests.conftest import clean_streams_now
    from tests.support.helpers import InProcessRegistry

    results = []
    for partitions in (2, 1):
        await clean_streams_now(nats_server.url)
        schema = f"{settings.registry_db_schema}_{partitions}"
        own = settings.model_copy(update={"registry_db_schema": schema,
                                          "partitions": partitions})
        async with InProcessRegistry(own) as registry:
            _, key = await registry.app.state.store.create_organization("P")
            matchers = [InProcessMatcher(matcher_settings.model_copy(update={
                "partitions": partitions, "matcher_partition": p,
                "matcher_bucket": f"{matcher_settings.matcher_bucket}{partitions}"}))
                for p in range(partitions)]
            for matcher in matchers:
                await matcher.__aenter__()
                await wait_ready(matcher.url)
            try:
                results.append(await _scenario(registry, key))
            finally:
                for matcher in matchers:
                    await matcher.__aexit__(None, None, None)
    two, one = results
    assert len(one) > 20 and two == one
