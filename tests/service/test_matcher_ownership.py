"""One live matcher per partition (a lease in its KV bucket), a matcher that does not agree
with REGISTRY on the partition count refusing to start, and replays after JetStream's
duplicate window that still put each MATCHES piece there once."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import nats
import orjson
import pytest
from nats.js.api import StreamConfig

from contracts.events import REGISTRY_STREAM, REGISTRY_SUBJECTS, design_partition_transform
from contracts.matches import MATCHES_STREAM
from contracts.models import Facility
from services.common import nats as nats_util
from services.matcher.checkpoint import Change, Checkpoint
from services.matcher.lease import Lease, LeaseLost
from services.matcher.profiles import facility_profile
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
    metric,
    settled,
    stream_messages,
    wait_ready,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
LEASE = {"MAKELOCAL_MATCHER_LEASE_S": "3", "MAKELOCAL_MATCHER_HEARTBEAT_S": "0.5"}


async def readiness(url: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        try:
            return (await http.get("/readyz")).json()["checks"]
        except httpx.TransportError:
            return {}


async def is_standby(url: str) -> bool:
    return (await readiness(url)).get("lease") == "unavailable: Standby"


async def scraped(url: str, name: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        return await metric(http, name)


def assert_each_piece_once(pieces: list[dict]) -> None:
    """No MATCHES message twice, and each change's pieces 0..n-1 once each."""
    ids = Counter(p["_msg_id"] for p in pieces)
    assert not [i for i, n in ids.items() if n > 1], "a piece published twice"
    by_change = Counter((p["cause"]["entity_id"], p["cause"]["version"], p["partition"],
                         p["piece"]) for p in pieces)
    assert max(by_change.values()) == 1


async def test_one_process_per_partition_consumes_and_the_standby_takes_over(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        matcher_env: dict[str, str], tmp_path: Path) -> None:
    key = auth(org[1]) | JSON
    env = matcher_env | LEASE
    first = ServiceProcess(env, tmp_path / "first.log", "matcher").start()
    await wait_ready(first.url)
    second = ServiceProcess(env, tmp_path / "second.log", "matcher").start()
    try:
        await eventually(lambda: is_standby(second.url), timeout=20)
        for i in range(6):
            await client.post(f"/v1/facilities?id=f{i}", content=facility_doc(f"F{i}", ["FDM"]),
                              headers=key)
        await client.post("/v1/designs?id=d0", content=design_doc("D0", ["3DP"]), headers=key)
        assert len(await settled(registry)) == 6
        # the standby consumed and published nothing, and still says why it is not ready
        assert await scraped(first.url, "makelocal_matcher_events_consumed_total") == 7
        assert await scraped(second.url, "makelocal_matcher_events_consumed_total") == 0
        assert await scraped(second.url, "makelocal_matcher_lease_held") == 0
        assert await is_standby(second.url)

        first.kill()  # SIGKILL: no release, the lease has to lapse
        killed = time.monotonic()
        await client.post("/v1/designs?id=d1", content=design_doc("D1", ["3DP"]), headers=key)
        await client.put("/v1/facilities/f0", content=facility_doc("F0", ["FDM"], status="Closed"),
                         headers=key | {"If-Match": '"1"'})
        await wait_ready(second.url, timeout=20)
        took = time.monotonic() - killed
        assert took < 3 + 5, f"took over after {took:.1f} s"
        assert len(await settled(registry)) == 10
        assert await scraped(second.url, "makelocal_matcher_lease_held") == 1

        # a clean stop releases the lease: the other process takes over at once
        first.start()
        await eventually(lambda: is_standby(first.url), timeout=20)
        second.stop()
        stopped = time.monotonic()
        await wait_ready(first.url, timeout=20)
        assert time.monotonic() - stopped < 3
        await client.post("/v1/designs?id=d2", content=design_doc("D2", ["3DP"]), headers=key)
        assert len(await settled(registry)) == 15
        assert_each_piece_once(await stream_messages(registry.settings.nats_url, MATCHES_STREAM))
        events = Counter(e["event_id"] for e in await match_events(registry.settings.nats_url))
        # d0 and d1 found 6 each, closing f0 withdrew 2, d2 found 5: each once
        assert len(events) == 6 + 6 + 2 + 5 and max(events.values()) == 1
    finally:
        first.stop()
        second.stop()


async def test_a_worker_that_cannot_renew_stops_before_the_standby_starts(
        nats_server, matcher_settings: MatcherSettings) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    bucket = f"lease{uuid.uuid4().hex[:8]}"
    await js.create_key_value(bucket=bucket)
    try:
        live = Lease(js, bucket, "live", lease_s=1.0, heartbeat_s=0.2)
        standby = Lease(js, bucket, "standby", lease_s=1.0, heartbeat_s=0.2)
        await live.acquire()
        live.check()
        taking = asyncio.create_task(standby.acquire())
        await asyncio.sleep(0.5)
        assert not taking.done()  # the live one's lease has not lapsed
        # the live one's heartbeat never runs (a batch holding its loop, a lost link):
        # its own guard stops it before the standby can take the partition
        await asyncio.wait_for(taking, 5)
        assert live.valid_until <= time.monotonic() - 0.2  # stopped well before
        with pytest.raises(LeaseLost):
            live.check()
        # its late renewal finds the lease another's and ends its life
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(live.keep(), 2)
        standby.check()
        # two takers at once: the compare-and-set lets one win
        await standby.release()
        racers = [Lease(js, bucket, f"r{i}", 3.0, 0.2) for i in range(3)]
        tasks = [asyncio.create_task(r.acquire()) for r in racers]
        done, pending = await asyncio.wait(tasks, timeout=0.8)
        assert len(done) == 1
        for task in pending:
            task.cancel()
    finally:
        await js.delete_key_value(bucket)
        await nc.close()


async def test_a_matcher_whose_partition_count_is_not_registrys_refuses_to_start(
        nats_server, matcher_settings: MatcherSettings, matcher_env: dict[str, str],
        clean_streams: None, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    nc = await nats.connect(nats_server.url)
    try:  # REGISTRY as a registry with MAKELOCAL_PARTITIONS=2 creates it
        await nats_util.ensure_stream(nc, nats_util.compacted_stream(
            REGISTRY_STREAM, [REGISTRY_SUBJECTS], 60, 1, design_partition_transform(2)))
    finally:
        await nc.close()
    caplog.set_level(logging.ERROR, "services.matcher.app")
    async with InProcessMatcher(matcher_settings) as matcher:
        await eventually(lambda: _refused(matcher.url), timeout=10)
        assert (await scraped(matcher.url, "makelocal_matcher_events_consumed_total")) == 0
    [refused] = [r for r in caplog.records if r.getMessage() == "matcher refuses to start"]
    assert ("MAKELOCAL_PARTITIONS is 1 for this matcher but the REGISTRY stream spreads"
            " designs over 2") in refused.error  # type: ignore[attr-defined]

    # the process: a log line that says why, and a non-zero exit
    log = tmp_path / "matcher.log"
    env = matcher_env | {"MAKELOCAL_PARTITIONS": "3"}
    proc = ServiceProcess(env, log, "matcher").start(wait=False)
    assert await proc.wait_dead(30) == 2
    text = log.read_text()
    assert "matcher refuses to start" in text and "spreads designs over 2" in text

    # agreeing, it starts
    agreeing = matcher_settings.model_copy(update={"partitions": 2})
    async with InProcessMatcher(agreeing) as matcher:
        await wait_ready(matcher.url)


async def _refused(url: str) -> bool:
    return (await readiness(url)).get("partitions") == "unavailable: PartitionMismatch"


async def test_a_replay_after_the_duplicate_window_publishes_each_piece_once(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        matcher_env: dict[str, str], tmp_path: Path) -> None:
    """Killed between the pieces of a fan-out, restarted once JetStream has forgotten the
    pieces' ids: the batch is applied again from its record, and only the pieces MATCHES
    lacks go out."""
    key = auth(org[1]) | JSON
    nats_url = registry.settings.nats_url
    env = matcher_env | LEASE | {"MAKELOCAL_MATCHER_PIECE_BYTES": "4096"}
    matcher = ServiceProcess(env, tmp_path / "matcher.log", "matcher").start(
        MAKELOCAL_CRASH_AT="matcher.mid_publish")
    await wait_ready(matcher.url)
    await post_fan_out(client, key)
    assert await matcher.wait_dead(30) == -signal.SIGKILL
    before = await stream_messages(nats_url, MATCHES_STREAM)
    assert 0 < len(before) < before[0]["pieces"]  # cut between its pieces

    # the outage outlasts the duplicate window (shortened here: the ids are forgotten,
    # and the matcher's start puts the window back as it was)
    nc = await nats.connect(nats_url)
    try:
        config: StreamConfig = (await nc.jetstream().stream_info(MATCHES_STREAM)).config
        config.duplicate_window = 1
        await nc.jetstream().update_stream(config)
    finally:
        await nc.close()
    await asyncio.sleep(2.5)

    matcher.start()
    try:
        assert len(await settled(registry)) == 80
        pieces = await stream_messages(nats_url, MATCHES_STREAM)
        assert_each_piece_once(pieces)
        assert sorted(p["piece"] for p in pieces) == list(range(pieces[0]["pieces"]))
        assert len(await match_events(nats_url)) == 80
    finally:
        matcher.stop()



async def test_a_batch_record_keeps_the_matches_sequence_before_its_pieces(
        nats_server) -> None:
    """What a replay reads MATCHES from; a record of the layout before it loads without."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    bucket = f"ck{uuid.uuid4().hex[:8]}"
    try:
        checkpoint = Checkpoint(js, bucket)
        await checkpoint.open()
        await checkpoint.reset(0, [])
        a1 = facility_profile(Facility(id="a", name="a"), 1)
        batch = [Change(1, "facility", "a", 1, None, a1, None, None)]
        await (await checkpoint.begin(batch, 42))
        loaded = await checkpoint.load()
        assert loaded is not None and loaded.pending == batch and loaded.matches_after == 42
        kv = await js.key_value(bucket)
        await kv.put("b.1", orjson.dumps([c.dump() for c in batch]))  # the older layout
        loaded = await checkpoint.load()
        assert loaded is not None and loaded.pending == batch and loaded.matches_after is None
    finally:
        await js.delete_key_value(bucket)
        await js.delete_object_store(f"{bucket}-snap")
        await nc.close()


async def test_a_matcher_whose_lease_is_taken_stops_consuming_until_it_is_back(
        client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
        matcher_settings: MatcherSettings) -> None:
    key = auth(org[1]) | JSON
    settings = matcher_settings.model_copy(update={"matcher_lease_s": 3.0,
                                                   "matcher_heartbeat_s": 0.5})
    async with InProcessMatcher(settings) as matcher:
        await wait_ready(matcher.url)
        await client.post("/v1/facilities?id=f0", content=facility_doc("F0", ["FDM"]), headers=key)
        consumed = "makelocal_matcher_events_consumed_total"
        await eventually(lambda: _at_least(matcher.url, consumed, 1))
        # another process takes the lease (as one would after a network partition)
        nc = await nats.connect(registry.settings.nats_url)
        try:
            kv = await nc.jetstream().key_value(settings.bucket)
            await kv.put("lease", orjson.dumps({"owner": "elsewhere", "expires": 0}))
        finally:
            await nc.close()
        await eventually(lambda: is_standby(matcher.url), timeout=5)
        assert await scraped(matcher.url, "makelocal_matcher_lease_held") == 0
        await client.post("/v1/designs?id=d0", content=design_doc("D0", ["3DP"]), headers=key)
        await asyncio.sleep(1.5)
        assert await scraped(matcher.url, consumed) == 1  # nothing consumed meanwhile
        assert not await match_events(registry.settings.nats_url)
        # "elsewhere" never renews: its lease lapses and the partition comes back
        await wait_ready(matcher.url, timeout=10)
        assert len(await settled(registry)) == 1


async def _at_least(url: str, name: str, n: float) -> bool:
    return await scraped(url, name) >= n
