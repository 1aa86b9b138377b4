"""Matcher benchmark at scale (default 100,000 facilities and 100,000 designs):

1. in process: index build time and memory per entity; per-change latency p50/p99 of the
   index (excluding publishing), and the same changes through a naive full-scan matcher;
2. through NATS: start-up from REGISTRY alone and from the checkpoint; consumer
   throughput end to end (changes/s) beside the raw nats-py consume-and-ack rate; the
   worker logs as the service does (a JSON line per change, here to a file).

    python -m bench.matcher [--facilities 100000] [--designs 100000] [--changes 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import statistics
import tempfile
import time
import tracemalloc
import uuid
from dataclasses import replace
from pathlib import Path

import psutil
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from prometheus_client import CollectorRegistry

from bench.synthetic import MATERIALS, Generator
from contracts.events import (
    REGISTRY_DUPLICATE_WINDOW_S,
    REGISTRY_STREAM,
    REGISTRY_SUBJECTS,
    EntityKind,
    new_event,
)
from contracts.matches import MATCHES_DUPLICATE_WINDOW_S
from makelocal.embedded import NatsServer, free_port
from services.common import logs
from services.common import nats as nats_util
from services.matcher import profiles
from services.matcher.checkpoint import Change
from services.matcher.consumer import MatcherWorker, gc_paused
from services.matcher.diff import apply_design, apply_facility
from services.matcher.index import CapabilityIndex
from services.matcher.metrics import MatcherMetrics
from services.matcher.outgoing import change_pieces
from services.matcher.profiles import Need, design_profile, facility_profile
from services.matcher.rules import can_make, evaluate
from services.matcher.settings import MatcherSettings

OLD_EVENT_BYTES = 882  # one match event per pair, as MATCHES held them before


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


def naive_change(designs: dict, facilities: dict, kind: str, old, new,
                 check=None) -> int:
    """The matcher written the obvious way: every pair with the changed entity evaluated
    before and after (as on-request matchers do: explained, every time)."""
    check = check or (lambda d, f: evaluate(d, f).matches)
    changed = 0
    others = facilities.values() if kind == "design" else designs.values()
    for other in others:
        pair_old = old is not None and (check(old, other) if kind == "design"
                                        else check(other, old))
        pair_new = new is not None and (check(new, other) if kind == "design"
                                        else check(other, new))
        changed += pair_old != pair_new
    return changed


def edits(gen: Generator, index: CapabilityIndex, n_des: int, count: int) -> list[tuple]:
    """Realistic edits as profiles: new designs (40 %), a design's material changed (20 %),
    a facility gaining or losing a process (30 %), a facility closing (10 %)."""
    out: list[tuple] = []
    facility_ids, design_ids = list(index.facilities), list(index.designs)
    for i in range(count):
        r = gen.rng.random()
        if r < 0.4:
            out.append(("design", design_profile(gen.design(n_des + i), 2)))
        elif r < 0.6:
            d = index.designs[gen.rng.choice(design_ids)]
            material = gen.rng.choice(MATERIALS)
            out.append(("design", replace(d, materials=(Need(material),))))
        elif r < 0.9:
            f = index.facilities[gen.rng.choice(facility_ids)]
            process = gen.rng.choices(gen.process_order, gen.process_weights)[0]
            processes = (f.processes - {process}) if process in f.processes else (
                f.processes | {process})
            out.append(("facility", replace(f, processes=frozenset(processes))))
        else:
            f = index.facilities[gen.rng.choice(facility_ids)]
            out.append(("facility", replace(f, status="closed")))
    return out


def in_process(args: argparse.Namespace) -> None:
    gen = Generator()
    # REGISTRY's form of each entity (JSON as dicts), as the matcher reads them
    facility_data = [gen.facility(i).model_dump(mode="json") for i in range(args.facilities)]
    design_data = [gen.design(i).model_dump(mode="json") for i in range(args.designs)]
    # memory first: a build under tracemalloc, which counts what stays allocated (RSS would
    # count the garbage of building too), with the shared values (profiles.shared) made
    # afresh so that they are counted too
    profiles._SHARED.clear()
    profiles._NEEDS.clear()
    gc.collect()
    tracemalloc.start()
    index = CapabilityIndex()
    with gc_paused():
        index.load([design_profile(d, 1) for d in design_data],
                   [facility_profile(f, 1) for f in facility_data])
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del index
    gc.collect()
    # then the timed build, and the latency run in a heap that holds what a matcher holds
    started = time.perf_counter()
    index = CapabilityIndex()
    with gc_paused():  # as the matcher's start-up does
        index.load([design_profile(d, 1) for d in design_data],
                   [facility_profile(f, 1) for f in facility_data])
    build = time.perf_counter() - started
    del facility_data, design_data
    gc.collect()
    print(f"index of {args.facilities} facilities + {args.designs} designs: profiles made and "
          f"indexed in {build:.1f} s; {held / (args.facilities + args.designs):.0f} bytes per "
          f"indexed entity (allocated and held: profiles, shared values, ids, posting lists, "
          f"part table)")
    latency(args, gen, index)


def latency(args: argparse.Namespace, gen: Generator, index: CapabilityIndex) -> None:
    latencies, fanouts, naive_times, lean_times, readout = [], [], [], [], []
    for n, (kind, profile) in enumerate(edits(gen, index, args.designs, args.changes)):
        version = 2 + n
        profile = replace(profile, version=version)
        old = (index.designs if kind == "design" else index.facilities).get(profile.id)
        if n < args.naive:
            t0 = time.perf_counter()
            naive_change(index.designs, index.facilities, kind, old, profile)
            naive_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            naive_change(index.designs, index.facilities, kind, old, profile, can_make)
            lean_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        diff = (apply_design if kind == "design" else apply_facility)(
            index, profile.id, profile, version)  # type: ignore[arg-type]
        latencies.append(time.perf_counter() - t0)
        fanouts.append(len(diff))
        t0 = time.perf_counter()
        change = Change(n, kind, profile.id, version, old, profile, None, None)
        pieces = change_pieces(diff, change, index, 1024 * 1024)
        readout.append((time.perf_counter() - t0, sum(p.found + p.withdrawn for p in pieces)))
        del pieces  # published and gone before the next change, as in the matcher
    small = [t for t, f in zip(latencies, fanouts, strict=True) if f <= 100]
    print(f"per change ({len(latencies)} changes; index lookup and diff, no explanations, "
          f"no publishing): p50 {pct(latencies, 50):.2f} ms, p99 {pct(latencies, 99):.2f} ms, "
          f"max {max(latencies) * 1000:.2f} ms; transitions per change p50 "
          f"{statistics.median(fanouts):.0f}, p99 {sorted(fanouts)[int(len(fanouts) * 0.99)]},"
          f" max {max(fanouts)}")
    if len(small) > 10:
        print(f"  the {len(small)} changes with at most 100 transitions: "
              f"p50 {pct(small, 50):.2f} ms, p99 {pct(small, 99):.2f} ms")
    print(f"fan-out read-out (each pair explained, encoded into its change's pieces, "
          f"compressed; before publishing): "
          f"{sum(t for t, _ in readout) / max(1, sum(n for _, n in readout)) * 1e6:.1f} us "
          f"per pair")
    naive_mean = statistics.mean(naive_times)
    index_mean = statistics.mean(latencies[:len(naive_times)])
    lean_mean = statistics.mean(lean_times)
    print(f"naive full scan, the first {len(naive_times)} changes: mean "
          f"{naive_mean * 1000:.1f} ms vs index {index_mean * 1000:.2f} ms: "
          f"{naive_mean / index_mean:.0f}x; a full scan with the index's fast predicate "
          f"(no explanations): {lean_mean * 1000:.1f} ms, {lean_mean / index_mean:.0f}x")
    return index


async def through_nats(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-matcher-"))
    server = NatsServer(work / "nats", free_port()).start()
    try:
        nc = await nats_util.connect(server.url, "bench")
        js = nc.jetstream()
        await nats_util.ensure_stream(nc, nats_util.compacted_stream(
            REGISTRY_STREAM, [REGISTRY_SUBJECTS], REGISTRY_DUPLICATE_WINDOW_S))
        gen = Generator(seed=11)

        async def publish(entities: list, kind: EntityKind, version: int) -> None:
            futures = []
            for e in entities:
                event = new_event(kind, entity_id=e.id, version=version, owner="bench", data=e)
                futures.append(await js.publish_async(event.subject,
                                                      event.model_dump_json().encode()))
                if len(futures) >= 5000:
                    await asyncio.gather(*futures)
                    futures = []
            await asyncio.gather(*futures)

        t0 = time.perf_counter()
        facilities = [gen.facility(i) for i in range(args.facilities)]
        designs = [gen.design(i) for i in range(args.designs)]
        await publish(facilities, EntityKind.facility, 1)
        await publish(designs, EntityKind.design, 1)
        print(f"REGISTRY loaded with {args.facilities + args.designs} events in "
              f"{time.perf_counter() - t0:.1f} s")

        bucket = f"bench{uuid.uuid4().hex[:6]}"
        # the worker logs as the matcher service does (a JSON line per change), to a file
        log_file = (work / "matcher.log").open("w")
        logs.configure("matcher", "INFO", log_file)

        async def start_worker() -> tuple[MatcherWorker, float, float]:
            conn = await nats_util.connect(server.url, "matcher")
            worker = MatcherWorker(conn, CapabilityIndex(), MatcherMetrics(CollectorRegistry()),
                                   bucket=bucket, durable=bucket, filter_subjects=[
                                       REGISTRY_SUBJECTS], batch=MatcherSettings().matcher_batch)
            gc.collect()
            before = rss_mib()
            started = time.perf_counter()
            await worker.start()
            return worker, time.perf_counter() - started, rss_mib() - before

        worker, from_registry, grown = await start_worker()
        print(f"start-up from REGISTRY alone: {from_registry:.1f} s "
              f"(index + checkpoint written; RSS +{grown:.0f} MiB)")
        await worker.nc.close()
        worker, from_checkpoint, grown = await start_worker()
        print(f"start-up from the checkpoint: {from_checkpoint:.1f} s (RSS +{grown:.0f} MiB)")

        # Throughput, twice: changes that move no match (a facility or design renamed,
        # the commonest registry write) measure the consumer's own cost per change;
        # changes that do (new designs, facilities re-registered with other equipment)
        # add the fan-out, whose cost is per match event: compared with raw publishing.
        quiet = renames(gen, facilities, designs, args.throughput)
        # the bench's own 100,000s of models live in the matcher's process here: out of the
        # collector's way, as the matcher's index is (a matcher process holds none of them)
        gc.collect()
        gc.freeze()
        await throughput(js, worker, "no match changes", quiet)
        # the JSON line per change is a fixed cost of its own, shown apart
        logging.getLogger().setLevel(logging.WARNING)
        await throughput(js, worker, "the same, no log line per change",
                         renames(gen, facilities, designs, args.throughput))
        logging.getLogger().setLevel(logging.INFO)
        loud = model_edits(gen, args.facilities, args.designs, args.fanout_changes)
        elapsed, events = await throughput(js, worker, "with fan-out", loud)
        raw_events = await raw_publish(js, 20_000)
        print(f"  match pairs: {events / elapsed:.0f}/s (explained, encoded, published "
              f"with acks) vs raw pipelined publish of single {OLD_EVENT_BYTES}-byte "
              f"messages: {raw_events:.0f}/s; ratio {events / elapsed / raw_events:.2f}")
        await worker.nc.close()
        await nc.close()
    finally:
        server.stop()


async def throughput(js: JetStreamContext, worker: MatcherWorker, label: str,
                     changes: list[tuple]) -> tuple[float, float]:
    """A backlog of changes, consumed by the worker, then the same messages by a raw
    consumer: (seconds, match events published)."""
    first_seq = last_seq = 0
    versions: dict[tuple[str, str], int] = {}
    for kind, entity in changes:
        key = (kind, entity.id)
        version = versions[key] = versions.get(key, worker.index.version(kind, entity.id)) + 1
        event = new_event(EntityKind(kind), entity_id=entity.id, version=version,
                          owner="bench", data=entity)
        ack = await js.publish(event.subject, event.model_dump_json().encode())
        first_seq, last_seq = first_seq or ack.seq, ack.seq
    consumed_before = worker.metrics.consumed._value.get()
    published_before = _published(worker)
    run = asyncio.create_task(worker.run())
    t0 = time.perf_counter()
    while worker.position < last_seq:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    events = _published(worker) - published_before
    # REGISTRY is compacted: a change superseded before it was read is never delivered
    consumed = worker.metrics.consumed._value.get() - consumed_before
    rate = consumed / elapsed
    raw_rate = await raw_consume(js, first_seq, last_seq, worker.batch)
    print(f"matcher end to end, {label}: {consumed:.0f} changes in {elapsed:.2f} s = "
          f"{rate:.0f} changes/s ({events:.0f} match events published); raw nats-py pull "
          f"consume + ack of the same messages: {raw_rate:.0f} msgs/s; ratio "
          f"{rate / raw_rate:.2f}")
    return elapsed, events


def _published(worker: MatcherWorker) -> float:
    return worker.metrics.found._value.get() + worker.metrics.withdrawn._value.get()


def renames(gen: Generator, facilities: list, designs: list, count: int) -> list[tuple]:
    """Registry events that change no match: an entity renamed."""
    out: list[tuple] = []
    for n in range(count):
        kind, pool = ("facility", facilities) if n % 2 else ("design", designs)
        entity = pool[gen.rng.randrange(len(pool))]
        out.append((kind, entity.model_copy(update={"name": f"{entity.name} ({n})"})))
    return out


async def raw_publish(js: JetStreamContext, count: float) -> float:
    """Pipelined publishes of single messages of one match event's size as MATCHES held
    them when each pair was its own message (882 bytes), with Nats-Msg-Id, acks awaited
    in windows: the ceiling of publishing a fan-out one message per pair."""
    await js.add_stream(name="RAWPUB", subjects=["rawpub.>"],
                        duplicate_window=MATCHES_DUPLICATE_WINDOW_S)
    payload = b"x" * OLD_EVENT_BYTES
    t0 = time.perf_counter()
    n = int(count)
    for start in range(0, n, 2000):
        futures = [await js.publish_async(f"rawpub.{i}", payload,
                                          headers={"Nats-Msg-Id": uuid.uuid4().hex})
                   for i in range(start, min(n, start + 2000))]
        await asyncio.gather(*futures)
    return n / (time.perf_counter() - t0)


def model_edits(gen: Generator, n_fac: int, n_des: int, count: int) -> list[tuple]:
    """Registry events for the throughput run: new designs, facilities re-registered."""
    out: list[tuple] = []
    for i in range(count):
        if gen.rng.random() < 0.5:
            out.append(("design", gen.design(n_des + i)))
        else:
            f = gen.facility(gen.rng.randrange(n_fac))
            out.append(("facility", f))
    return out


async def raw_consume(js: JetStreamContext, first_seq: int, last_seq: int, batch: int,
                      ) -> float:
    """Pull (in the matcher's batch size), parse nothing, ack each: the ceiling for any
    consumer of the same messages."""
    await js.add_consumer(REGISTRY_STREAM, ConsumerConfig(
        durable_name=f"raw{first_seq}", ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first_seq))
    sub = await js.pull_subscribe_bind(durable=f"raw{first_seq}", stream=REGISTRY_STREAM)
    seen, position = 0, 0
    t0 = done = time.perf_counter()
    while position < last_seq:
        try:
            msgs = await sub.fetch(batch, timeout=2)
        except TimeoutError:
            break  # nothing left: the rest was superseded in the compacted stream
        for msg in msgs:
            await msg.ack()
            seen += 1
            position = msg.metadata.sequence.stream
        done = time.perf_counter()
    return seen / (done - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--facilities", type=int, default=100_000)
    parser.add_argument("--designs", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--naive", type=int, default=50)
    parser.add_argument("--throughput", type=int, default=20000,
                        help="changes that move no match, for the consumer's own rate")
    parser.add_argument("--fanout-changes", type=int, default=200,
                        help="changes with their fan-out, for the match event rate")
    parser.add_argument("--skip-nats", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    in_process(args)
    if not args.skip_nats:
        asyncio.run(through_nats(args))


if __name__ == "__main__":
    main()
