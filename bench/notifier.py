"""Notifier benchmark, with real NATS, PostgreSQL and service processes.

1. Deliveries/s: S webhook subscriptions of O organizations (each has its share of the
   notifier's delivery slots), waves of one match event per subscription published
   straight to MATCHES; webhook calls and match events per second at a local receiver
   that answers 204 without a Content-Length, as most do.
2. Through the whole stack (registry, matcher, notifier as processes): new designs posted at
   a fixed rate, latency from the registry's HTTP response to the webhook that carries the
   design's match; then higher rates, to find the highest one the stack sustains.

    python -m bench.notifier [--subscriptions 1000] [--organizations 10] [--waves 5]
                             [--rates 200,400,800]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

import httpx
import nats
import orjson
from nats.aio.msg import Msg

from bench.registry import RawHttpClient
from bench.sink import Sink
from bench.stack import Stack
from makelocal.status import read_metrics
from tests.support.builders import facility_doc
from tests.support.helpers import publish_matches


class Receiver(Sink):
    """Notes when each design's match arrived."""

    def __init__(self) -> None:
        self.calls = 0
        self.events = 0
        self.first: float | None = None
        self.last = 0.0
        self.arrived: dict[str, float] = {}

    def received(self, body: bytes, now: float) -> None:
        self.first = self.first or now
        self.last = now
        self.calls += 1
        for event in orjson.loads(body)["data"]["events"]:
            self.events += 1
            self.arrived.setdefault(event["design_id"], now)


class BusWatch:
    """Notes when each design's registry event and first match event pass on the bus (a
    core NATS subscription sees a stream's messages as they are stored), so that the
    latency splits into relay, matcher and notifier."""

    def __init__(self) -> None:
        self.registry: dict[str, float] = {}
        self.matches: dict[str, float] = {}

    async def start(self, nats_url: str) -> None:
        self.nc = await nats.connect(nats_url)
        await self.nc.subscribe("registry.design.>", cb=self._noted(self.registry, 2))
        await self.nc.subscribe("matches.design.>", cb=self._noted(self.matches, 2))

    @staticmethod
    def _noted(into: dict[str, float], token: int):  # type: ignore[no-untyped-def]
        async def note(msg: Msg) -> None:
            into.setdefault(msg.subject.split(".")[token], time.perf_counter())
        return note


async def assemble_passes(url: str) -> tuple[float, float]:
    """(passes, seconds in them) from the notifier's metrics."""
    async with httpx.AsyncClient(timeout=10) as http:
        values = read_metrics((await http.get(url)).text)
    name = "makelocal_notifier_assemble_duration_seconds"
    return values.get(f"{name}_count", 0.0), values.get(f"{name}_sum", 0.0)


async def wait_until(check, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.01)
    return False


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else 0.0


async def deliveries_per_second(nats_url: str, notifier: RawHttpClient, keys: list[str],
                                receiver: Receiver, url: str, subscriptions: int,
                                waves: int) -> None:
    for i in range(subscriptions):
        headers = {"Authorization": f"Bearer {keys[i % len(keys)]}",
                   "Content-Type": "application/json"}
        status, body = await notifier.post("/v1/subscriptions", json.dumps({
            "channel": "webhook", "url": url, "filter": {"facility_ids": [f"bf{i}"]}}).encode(),
            headers)
        assert status == 201, body
    await asyncio.sleep(1.5)  # the consumer reloads its routes
    for wave in range(waves):
        await publish_matches(nats_url, [(f"w{wave}-d{i}", f"bf{i}")
                                         for i in range(subscriptions)])
    total = subscriptions * waves
    await wait_until(lambda: receiver.events >= total, 300)
    span = receiver.last - (receiver.first or receiver.last)
    print(f"deliveries: {receiver.calls} webhook calls carrying {receiver.events} match events "
          f"in {span:.2f} s: {receiver.calls / span:.0f} calls/s, "
          f"{receiver.events / span:.0f} events/s, {len(keys)} organizations"
          " (target >= 1,000 deliveries/s)")


async def stack_rate(registry: RawHttpClient, key: str, receiver: Receiver, rate: float,
                     seconds: float, tag: str,
                     bus: BusWatch) -> tuple[list[float], float, int, str]:
    """Post new designs at `rate`/s for `seconds`; (latencies s, the rate achieved,
    webhooks missing, the latency's split by hop)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    answered: dict[str, float] = {}
    n = int(rate * seconds)
    started = time.perf_counter()
    clients = [RawHttpClient(registry.port) for _ in range(32)]
    pending: set[asyncio.Task] = set()

    async def post(i: int, client: RawHttpClient) -> None:
        design = f"{tag}-{i}"
        doc = {"okhv": "OKH-LOSHv1.0", "name": f"Bench {design}", "tsdc": ["3DP"]}
        status, body = await client.post(f"/v1/designs?id={design}",
                                         json.dumps(doc).encode(), headers)
        assert status == 201, body
        answered[design] = time.perf_counter()

    free = list(clients)
    for i in range(n):
        due = started + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        while not free:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        client = free.pop()
        task = asyncio.create_task(post(i, client))
        pending.add(task)
        task.add_done_callback(lambda t, c=client: (pending.discard(t), free.append(c)))
    await asyncio.gather(*pending)
    achieved = n / (time.perf_counter() - started)
    await wait_until(lambda: all(d in receiver.arrived for d in answered), 30)
    for c in clients:
        c.close()
    latencies = [receiver.arrived[d] - t for d, t in answered.items() if d in receiver.arrived]
    hops = {"response -> REGISTRY": (answered, bus.registry),
            "REGISTRY -> MATCHES": (bus.registry, bus.matches),
            "MATCHES -> webhook": (bus.matches, receiver.arrived)}
    split = "; ".join(
        f"{name} p50 {pct(spans, 50):.0f} / p99 {pct(spans, 99):.0f} ms"
        for name, (before, after) in hops.items()
        if (spans := [after[d] - before[d] for d in answered if d in before and d in after]))
    return latencies, achieved, n - len(latencies), split


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--organizations", type=int, default=10)
    parser.add_argument("--waves", type=int, default=5)
    parser.add_argument("--rates", default="200,400,800")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    stack = Stack("bench-notifier-")
    nats_server, postgres, ports = stack.nats, stack.postgres, stack.ports
    receiver = Receiver()
    try:
        keys = await stack.keys(args.organizations)
        key = keys[0]
        stack.start()
        url = f"http://127.0.0.1:{await receiver.start()}/hook"
        notifier = RawHttpClient(ports["notifier"])
        registry = RawHttpClient(ports["registry"])
        print(f"machine: {os.cpu_count()} cores")
        await deliveries_per_second(nats_server.url, notifier, keys, receiver, url,
                                    args.subscriptions, args.waves)

        # the whole stack: 20 facilities, 3 of which 3D print (so each new design matches
        # 3), one subscription to one of them
        # (fresh connections: the servers close idle keep-alive ones after 5 s)
        notifier.close()
        notifier, registry = RawHttpClient(ports["notifier"]), RawHttpClient(ports["registry"])
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for i in range(20):
            status, body = await registry.post(f"/v1/facilities?id=lab{i}", facility_doc(
                f"Lab {i}", ["3D printing"] if i % 7 == 0 else ["laser cutting", "CNC milling"],
                lat=48 + i / 10, lon=2 + i / 10), headers)
            assert status == 201, body
        status, body = await notifier.post("/v1/subscriptions", json.dumps({
            "channel": "webhook", "url": url, "filter": {"facility_ids": ["lab0"]}}).encode(),
            headers)
        assert status == 201, body
        await asyncio.sleep(2)
        bus = BusWatch()
        await bus.start(nats_server.url)
        await stack_rate(registry, key, receiver, 50, 2, "warm", bus)
        notifier_metrics = f"http://127.0.0.1:{ports['notifier']}/metrics"
        for rate in (float(r) for r in args.rates.split(",")):
            passes_before = await assemble_passes(notifier_metrics)
            latencies, achieved, missing, split = await stack_rate(
                registry, key, receiver, rate, args.seconds, f"r{int(rate)}", bus)
            passes = await assemble_passes(notifier_metrics)
            count = passes[0] - passes_before[0]
            split += (f"; notifier assembly passes: {count:.0f},"
                      f" mean {(passes[1] - passes_before[1]) / max(count, 1) * 1000:.1f} ms")
            print(f"stack at {rate:.0f} designs/s for {args.seconds:.0f} s (posted at "
                  f"{achieved:.0f}/s): "
                  f"{missing} webhooks missing after 30 s; registry response -> webhook "
                  f"p50 {pct(latencies, 50):.0f} ms, p99 {pct(latencies, 99):.0f} ms"
                  + (" (target p99 <= 100 ms at 200/s)" if rate == 200 else "")
                  + f"\n  by hop: {split}")
        if os.environ.get("BENCH_HOLD"):  # keep everything up for inspection
            print("holding", nats_server.url, postgres.url, flush=True)
            await asyncio.sleep(float(os.environ["BENCH_HOLD"]))
    finally:
        stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
