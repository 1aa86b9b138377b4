"""Fan-out benchmark: real facilities, designs like the real ones, 1,000 subscriptions.

Everything of ../shared/data is imported with the importer users run (1,301 fab labs and
makerspaces, 141 real designs); new designs are copies of the real manifests, so that
most of them, like most real designs, can be made at ~1,200 of those labs. 1,000 webhook
subscriptions: 300 by facility (labs watching their own), 100 by region (25 km around a
real lab), 600 by design (authors watching the designs they are about to write). NATS,
PostgreSQL, the registry, the matcher and the notifier run as processes, the receiver
here; expected entries come from the same rules run in this process.

Printed, in one run:
- the raw JetStream ceilings of the same server: pipelined single-message publish (of an
  882-byte message, one match event as it was) and pull consume + ack;
- drain: N designs written through the registry API as fast as it takes them, the time
  until every expected webhook entry is at the receiver, and match pairs per second;
- MATCHES bytes per pair; the notifier's PostgreSQL rows and bytes per delivered entry;
- steady: webhook latency (registry 201 -> entry at the receiver) at fixed rates;
- wide change: a facility edit that makes it match every design: the time until its
  subscriber holds every match;
- matcher stage (the notifier stopped): N designs put straight on REGISTRY, match pairs
  published to MATCHES per second.

    python -m bench.fanout [--designs 10000] [--rates 5,20,50] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import nats
import orjson
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.registry import RawHttpClient
from bench.sink import Sink
from bench.stack import Stack
from contracts import vocabulary
from contracts.events import EntityKind, new_event
from contracts.geo import haversine_km
from contracts.matches import MATCHES_STREAM
from ingest.okh import read_design
from ingest.okw import read_facility
from makelocal.importer import import_paths, read_all
from makelocal.status import read_metrics
from services.matcher.index import CapabilityIndex
from services.matcher.profiles import DesignProfile, design_profile, facility_profile
from tests.support.builders import facility_doc
from tests.support.helpers import DATA

OLD_EVENT_BYTES = 882  # one match event per pair, as MATCHES held them before
COUNT = re.compile(rb'"count":(\d+)')  # a webhook body's entries, near its start


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else 0.0


class Receiver(Sink):
    """Counts entries, and while `recording`, notes when each design's entries arrive."""

    def __init__(self) -> None:
        self.entries = 0
        self.calls = 0
        self.recording = False
        self.arrivals: list[tuple[str, float]] = []
        self.changed = time.perf_counter()

    def received(self, body: bytes, now: float) -> None:
        self.changed = now
        self.calls += 1
        # parsed only when timed: a real receiver parses on its own machine, not on the
        # two cores the stack is measured on
        if self.recording:
            events = orjson.loads(body)["data"]["events"]
            self.arrivals.extend((e["design_id"], now) for e in events)
            self.entries += len(events)
        else:
            found = COUNT.search(body, 0, 400)
            self.entries += int(found.group(1)) if found else 0


class World:
    """What the stack should do, worked out here by the same rules: the facilities and
    designs it holds, and who subscribed to what."""

    def __init__(self, rng: random.Random) -> None:
        self.index = CapabilityIndex()
        self.templates: list[dict[str, Any]] = []
        facilities, designs = [], []
        for record, body, _ in read_all([DATA]):
            if body is None:
                continue
            if record.kind == "facility":
                facilities.append(facility_profile(
                    read_facility(record.document, facility_id=record.entity_id), 1))
            else:
                doc = json.loads(json.dumps(record.document, default=str))
                self.templates.append(doc)
                designs.append(design_profile(read_design(doc, design_id=record.entity_id), 1))
        self.index.load(designs, facilities)
        self.facilities = {f.id: f for f in facilities}
        active = sorted(f.id for f in facilities if f.active)
        placed = sorted(f.id for f in facilities if f.lat is not None)
        self.by_facility = rng.sample(active, 300)
        self.regions = [(self.facilities[i].lat, self.facilities[i].lon, 25.0)
                        for i in rng.sample(placed, 100)]
        self.watchers: dict[str, int] = {}  # facility -> subscriptions that get its pairs
        for f in facilities:
            n = self.by_facility.count(f.id)
            if f.lat is not None and f.lon is not None:
                n += sum(1 for lat, lon, r in self.regions
                         if haversine_km(lat, lon, f.lat, f.lon) <= r)
            if n:
                self.watchers[f.id] = n
        self.watched_designs: set[str] = set()

    def design(self, design_id: str, n: int) -> tuple[bytes, DesignProfile]:
        doc = self.templates[n % len(self.templates)]
        profile = design_profile(read_design(doc, design_id=design_id), 1)
        return json.dumps(doc).encode(), profile

    def add_design(self, profile: DesignProfile) -> tuple[int, int]:
        """(pairs, webhook entries) the new design makes."""
        self.index.put_design(profile)
        matched = list(self.index.facilities.profiles(self.index.facilities_for(profile)))
        entries = sum(self.watchers.get(f.id, 0) for f in matched)
        if profile.id in self.watched_designs:
            entries += len(matched)
        return len(matched), entries

    def subscriptions(self, designs: list[str]) -> list[dict[str, Any]]:
        self.watched_designs = set(designs)
        return ([{"facility_ids": [f]} for f in self.by_facility]
                + [{"region": {"lat": lat, "lon": lon, "radius_km": r}}
                   for lat, lon, r in self.regions]
                + [{"design_ids": [d]} for d in designs])


async def raw_ceilings(nats_url: str, count: int) -> tuple[float, float]:
    """(pipelined single-message publishes/s, pull consume + ack/s) on the same server."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await js.add_stream(name="RAWPUB", subjects=["rawpub.>"], duplicate_window=1200)
        payload = b"x" * OLD_EVENT_BYTES
        window = 2000  # as the matcher published one event per pair
        t0 = time.perf_counter()
        for start_at in range(0, count, window):
            futures = [await js.publish_async(f"rawpub.{i}", payload,
                                              headers={"Nats-Msg-Id": uuid.uuid4().hex})
                       for i in range(start_at, min(count, start_at + window))]
            await asyncio.gather(*futures)
        publish = count / (time.perf_counter() - t0)
        await js.add_consumer("RAWPUB", ConsumerConfig(
            durable_name="raw", ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, max_ack_pending=20_000))
        sub = await js.pull_subscribe_bind(durable="raw", stream="RAWPUB")
        seen = 0
        t0 = time.perf_counter()
        while seen < count:
            for msg in await sub.fetch(256, timeout=5):
                await msg.ack()
                seen += 1
        consume = count / (time.perf_counter() - t0)
        await js.delete_stream("RAWPUB")
        return publish, consume
    finally:
        await nc.close()


async def post_designs(port: int, key: str, bodies: list[tuple[str, bytes]], rate: float | None,
                       answered: dict[str, float], concurrency: int = 32) -> float:
    """POST each (id, body) at `rate`/s (None: as fast as the registry takes them); the
    rate achieved."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    started = time.perf_counter()

    async def worker() -> None:
        client = RawHttpClient(port)
        try:
            while not queue.empty():
                i = queue.get_nowait()
                if rate:
                    await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
                design_id, body = bodies[i]
                status, text = await client.post(f"/v1/designs?id={design_id}", body, headers)
                assert status == 201, text
                answered[design_id] = time.perf_counter()
        finally:
            client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(bodies) / (time.perf_counter() - started)


async def until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.005)
    return check()


async def metrics(port: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as http:
        return read_metrics((await http.get(f"http://127.0.0.1:{port}/metrics")).text)


async def pairs_published(port: int) -> float:
    m = await metrics(port)
    return m.get("makelocal_matcher_matches_found_total", 0.0) + m.get(
        "makelocal_matcher_matches_withdrawn_total", 0.0)


async def matches_bytes(nats_url: str) -> tuple[int, int]:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(MATCHES_STREAM)
        return info.state.bytes, info.state.messages
    finally:
        await nc.close()


async def notifier_storage(postgres_url: str) -> tuple[int, int]:
    """(rows, bytes with indexes and TOAST) of the notifier's items, deliveries, attempts."""
    conn = await asyncpg.connect(postgres_url)
    try:
        rows = bytes_ = 0
        for table in ("items", "deliveries", "attempts"):
            rows += await conn.fetchval(f"SELECT count(*) FROM notifier.{table}")
            bytes_ += await conn.fetchval(
                f"SELECT pg_total_relation_size('notifier.{table}')")
        return rows, bytes_
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--designs", type=int, default=10_000)
    parser.add_argument("--rates", default="5,20,50")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--notifiers", type=int, default=1,
                        help="notifier processes (they share the consumer and the work)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    stack = Stack("bench-fanout-")
    nats_server, postgres, ports = stack.nats, stack.postgres, stack.ports
    receiver = Receiver()
    print(f"machine: {os.cpu_count()} cores; {args.notifiers} notifier process(es)")
    try:
        publish_ceiling, consume_ceiling = await raw_ceilings(nats_server.url, 50_000)
        print(f"raw JetStream, same server: {publish_ceiling:,.0f} single-message publishes/s "
              f"(pipelined, {OLD_EVENT_BYTES} B); {consume_ceiling:,.0f} pull consume + ack/s")
        key = await stack.key()
        stack.start()
        for _ in range(args.notifiers - 1):
            stack.add("notifier")
        registry_url = f"http://127.0.0.1:{ports['registry']}"
        world = World(rng)
        t0 = time.perf_counter()
        summary = await import_paths([DATA], registry_url=registry_url, api_key=key,
                                     progress=False)
        print(f"imported ../shared/data in {time.perf_counter() - t0:.1f} s: "
              f"{dict(summary.counts)}; {len(world.facilities)} facilities, "
              f"{len(world.templates)} real designs as templates")
        await wide_setup(registry_url, key)

        drain_ids = [f"bench-d-{i}" for i in range(args.designs)]
        url = f"http://127.0.0.1:{await receiver.start()}/hook"
        filters = [*world.subscriptions(rng.sample(drain_ids, min(600, len(drain_ids)))),
                   {"facility_ids": [WIDE]}]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['notifier']}",
                                     timeout=30, headers={"Authorization": f"Bearer {key}"}
                                     ) as notifier:
            for f in filters:
                r = await notifier.post("/v1/subscriptions",
                                        json={"channel": "webhook", "url": url, "filter": f})
                assert r.status_code == 201, r.text
        await asyncio.sleep(2)  # the notifier reloads its routes

        # drain
        bodies, pairs, entries = [], 0, 0
        for n, design_id in enumerate(drain_ids):
            body, profile = world.design(design_id, n)
            bodies.append((design_id, body))
            p, e = world.add_design(profile)
            pairs, entries = pairs + p, entries + e
        answered: dict[str, float] = {}
        t0 = time.perf_counter()
        written = await post_designs(ports["registry"], key, bodies, None, answered)
        posted = time.perf_counter() - t0
        done = await until(lambda: receiver.entries >= entries, 3600)
        span = receiver.changed - t0
        await asyncio.sleep(2)
        print(f"drain: {len(bodies)} designs written in {posted:.1f} s ({written:.0f}/s); "
              f"{pairs:,} match pairs, {entries:,} webhook entries expected, "
              f"{receiver.entries:,} received{'' if done else ' (gave up waiting)'} in "
              f"{span:.1f} s through {receiver.calls:,} webhook calls: "
              f"{pairs / span:,.0f} pairs/s = {pairs / span / publish_ceiling:.2f}x the raw "
              f"publish rate (target >= 2x)")
        stored, messages = await matches_bytes(nats_server.url)
        published = await pairs_published(ports["matcher"])
        print(f"MATCHES: {stored:,} bytes in {messages:,} messages for {published:,.0f} pairs: "
              f"{stored / max(published, 1):.1f} bytes per pair (target <= 40; was "
              f"{OLD_EVENT_BYTES}), {stored / max(messages, 1):,.0f} bytes per message")
        consumed = (await metrics(ports["notifier"])).get(
            "makelocal_notifier_events_consumed_total", 0.0)
        print(f"notifier: {consumed:,.0f} MATCHES messages consumed")
        rows, size = await notifier_storage(postgres.url)
        print(f"notifier PostgreSQL: {rows:,} rows, {size / 2**20:,.0f} MiB for "
              f"{receiver.entries:,} delivered entries: {rows / max(receiver.entries, 1):.2f} "
              f"rows and {size / max(receiver.entries, 1):,.0f} bytes per entry")

        # steady
        bus = BusWatch()
        await bus.start(nats_server.url)
        for rate in (float(r) for r in args.rates.split(",")):
            await steady(world, receiver, ports["registry"], key, rate, args.seconds, bus,
                         ports["notifier"])

        # wide change
        await wide_change(world, receiver, registry_url, key)

        # matcher stage, alone
        stack.stop(*(name for name in stack.procs if name.startswith("notifier")))
        await matcher_stage(world, nats_server.url, ports["matcher"], args.designs,
                            publish_ceiling)
    finally:
        stack.stop()


class BusWatch:
    """When each design's registry event and first match message pass on the bus (a core
    subscription sees a stream's messages as they are stored): the latency by hop."""

    def __init__(self) -> None:
        self.registry: dict[str, float] = {}
        self.matches: dict[str, float] = {}

    async def start(self, nats_url: str) -> None:
        self.nc = await nats.connect(nats_url)
        for subject, into in (("registry.design.>", self.registry),
                              ("matches.design.>", self.matches)):
            await self.nc.subscribe(subject, cb=self._noted(into))

    @staticmethod
    def _noted(into: dict[str, float]) -> Any:
        async def note(msg: Any) -> None:
            into.setdefault(msg.subject.split(".")[-1], time.perf_counter())
        return note

    def hops(self, answered: dict[str, float], arrived: dict[str, float]) -> str:
        spans = {"201 -> REGISTRY": (answered, self.registry),
                 "REGISTRY -> MATCHES": (self.registry, self.matches),
                 "MATCHES -> first entry": (self.matches, arrived)}
        return "; ".join(
            f"{name} p50 {pct(d, 50):.0f} / p99 {pct(d, 99):.0f} ms"
            for name, (before, after) in spans.items()
            if (d := [after[k] - before[k] for k in answered if k in before and k in after]))


async def assembly(port: int) -> tuple[float, float]:
    """(passes, seconds in them) of the notifier's assembly loop."""
    m = await metrics(port)
    name = "makelocal_notifier_assemble_duration_seconds"
    return m.get(f"{name}_count", 0.0), m.get(f"{name}_sum", 0.0)


async def steady(world: World, receiver: Receiver, port: int, key: str, rate: float,
                 seconds: float, bus: BusWatch, notifier_port: int) -> None:
    tag = f"bench-s{int(rate)}"
    bodies, expected = [], 0
    for n in range(int(rate * seconds)):
        design_id = f"{tag}-{n}"
        body, profile = world.design(design_id, n)
        bodies.append((design_id, body))
        expected += world.add_design(profile)[1]
    before = receiver.entries
    receiver.arrivals, receiver.recording = [], True
    answered: dict[str, float] = {}
    passes = await assembly(notifier_port)
    achieved = await post_designs(port, key, bodies, rate, answered)
    done = await until(lambda: receiver.entries - before >= expected, 120)
    receiver.recording = False
    count, spent = (a - b for a, b in zip(await assembly(notifier_port), passes, strict=True))
    latencies = [t - answered[d] for d, t in receiver.arrivals if d in answered]
    last: dict[str, float] = {}
    first: dict[str, float] = {}
    for d, t in receiver.arrivals:
        if d in answered:
            last[d] = max(last.get(d, 0.0), t - answered[d])
            first.setdefault(d, t)
    held = "" if achieved >= rate * 0.95 else " (the stack did not hold the rate)"
    print(f"steady at {rate:.0f} designs/s for {seconds:.0f} s: posted at {achieved:.1f}/s"
          f"{held}; {expected:,} entries expected, {receiver.entries - before:,} received"
          f"{'' if done else ' (gave up after 120 s)'}; registry 201 -> entry at the webhook "
          f"p50 {pct(latencies, 50):.0f} ms, p99 {pct(latencies, 99):.0f} ms; a design's "
          f"last entry p50 {pct(list(last.values()), 50):.0f} ms, p99 "
          f"{pct(list(last.values()), 99):.0f} ms"
          + (" (target p99 <= 100 ms)" if rate == 20 else "")
          + f"\n  by hop: {bus.hops(answered, first)}; notifier assembly passes: "
            f"{count:.0f}, mean {spent / max(count, 1) * 1000:.1f} ms")


WIDE = "bench-wide"


async def wide_setup(registry_url: str, key: str) -> None:
    """A closed facility that answers every process, far from every region watched."""
    processes = sorted(vocabulary.processes().entries)
    async with httpx.AsyncClient(base_url=registry_url, timeout=30) as http:
        r = await http.post(f"/v1/facilities?id={WIDE}", content=facility_doc(
            "Everything workshop", processes, status="Closed", lat=0.0, lon=-30.0),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        assert r.status_code == 201, r.text


async def wide_change(world: World, receiver: Receiver, registry_url: str, key: str) -> None:
    processes = sorted(vocabulary.processes().entries)
    doc = facility_doc("Everything workshop", processes, status="Active", lat=0.0, lon=-30.0)
    facility = facility_profile(read_facility(json.loads(doc), facility_id=WIDE), 2)
    world.index.put_facility(facility)
    designs = list(world.index.designs.profiles(world.index.designs_for(facility)))
    expected = len(designs) + sum(1 for d in designs if d.id in world.watched_designs)
    before = receiver.entries
    async with httpx.AsyncClient(base_url=registry_url, timeout=30) as http:
        t0 = time.perf_counter()
        r = await http.put(f"/v1/facilities/{WIDE}", content=doc, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json",
            "If-Match": '"1"'})
        answered = time.perf_counter()
        assert r.status_code == 200, r.text
    done = await until(lambda: receiver.entries - before >= expected, 120)
    print(f"wide change: a facility edit that matches {len(designs):,} designs; "
          f"{expected:,} entries expected, {receiver.entries - before:,} received "
          f"{(receiver.changed - answered):.2f} s after the registry's answer "
          f"({(receiver.changed - t0):.2f} s after the request)"
          f"{'' if done else ' (gave up after 120 s)'} (target <= 2 s)")


async def matcher_stage(world: World, nats_url: str, matcher_port: int, count: int,
                        publish_ceiling: float) -> None:
    """Designs put on REGISTRY directly (what the relay would publish), the notifier
    stopped: the matcher's own rate of match pairs into MATCHES."""
    events, expected = [], 0
    for n in range(count):
        design_id = f"bench-m-{n}"
        doc = world.templates[n % len(world.templates)]
        design = read_design(doc, design_id=design_id)
        expected += world.add_design(design_profile(design, 1))[0]
        event = new_event(EntityKind.design, entity_id=design_id, version=1, owner="bench",
                          data=design)
        events.append((event.subject, event.model_dump_json().encode(), str(event.event_id)))
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    before = await pairs_published(matcher_port)
    t0 = time.perf_counter()
    futures = []
    for subject, payload, event_id in events:
        futures.append(await js.publish_async(subject, payload,
                                              headers={"Nats-Msg-Id": event_id}))
    await asyncio.gather(*futures)
    await nc.close()
    reached = before
    deadline = time.monotonic() + 600
    while reached - before < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        reached = await pairs_published(matcher_port)
    elapsed = time.perf_counter() - t0
    rate = (reached - before) / elapsed
    print(f"matcher stage: {count} designs, {reached - before:,.0f} of {expected:,} pairs "
          f"published in {elapsed:.1f} s: {count / elapsed:,.0f} changes/s, {rate:,.0f} "
          f"pairs/s = {rate / publish_ceiling:.1f}x the raw publish rate (target >= 5x)")


if __name__ == "__main__":
    asyncio.run(main())
