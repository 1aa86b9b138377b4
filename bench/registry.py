"""Registry write benchmark: N design writes over HTTP at concurrency C against a real
registry process, real PostgreSQL and real NATS; then the raw asyncpg rate of the same
two-insert transaction (entity row + outbox row) as the ceiling.

    python -m bench.registry [--writes 3000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats
import psutil

from contracts.events import EntityKind, new_event
from makelocal.embedded import NatsServer, PostgresServer, free_port, stop_process, wait_for_port
from services.common import db
from services.registry.entities import prepare
from services.registry.store import Store


def manifest(i: int) -> bytes:
    return json.dumps({
        "okhv": "OKH-LOSHv1.0", "name": f"Bench design {i}", "license": "CERN-OHL-S-2.0",
        "tsdc": ["3DP"], "material": "PLA",
        "part": [{"name": "body", "tsdc": "3DP", "printing-process": "FDM",
                  "outer-dimension": "cube(size=[100,80,20])", "outer-dimension-dim": "mm"}],
    }).encode()


class RawHttpClient:
    """HTTP/1.1 keep-alive over asyncio streams: a load generator that costs little CPU, so
    the 2 cores measure the registry and not the client (httpx spends more than the server)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        for _ in range(2):  # a keep-alive connection the server closed: once more, fresh
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1",
                                                                         self.port)
            assert self.reader is not None
            self.writer.write(head.encode() + body)
            status_line = await self.reader.readline()
            if status_line:
                break
            self.close()
            self.writer = None
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def http_writes(port: int, key: str, n: int, concurrency: int,
                      prefix: str) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def worker() -> None:
        client = RawHttpClient(port)
        try:
            while not queue.empty():
                i = queue.get_nowait()
                start = time.perf_counter()
                status, body = await client.post(f"/v1/designs?id={prefix}-{i}", manifest(i),
                                                 headers)
                latencies.append(time.perf_counter() - start)
                if status != 201:
                    raise RuntimeError(f"write {i}: {status} {body[:300]!r}")
        finally:
            client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def wait_stream(nats_url: str, n: int, since: float) -> float:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        while True:
            try:
                info = await js.stream_info("REGISTRY")
                if info.state.messages >= n:
                    return time.perf_counter() - since
            except Exception:
                pass
            await asyncio.sleep(0.01)
    finally:
        await nc.close()


async def raw_transactions(dsn: str, n: int, concurrency: int) -> float:
    """The same two inserts per transaction (entity row and outbox row, with the same
    content the registry writes) through asyncpg alone: the ceiling."""
    schema = f"raw_{uuid.uuid4().hex[:8]}"
    await db.migrate(dsn, schema, "services.registry")
    pool = await db.create_pool(dsn, schema, max_size=concurrency)
    org, _ = await Store(pool).create_organization("raw")
    rows = []
    for i in range(n):  # prepared outside the timing: the ceiling is the database's
        p = prepare(EntityKind.design, manifest(i), "application/json", f"raw-{i}")
        event = new_event(EntityKind.design, entity_id=f"raw-{i}", version=1, owner=org,
                          data=p.entity)
        rows.append((p, event.event_id, event.subject, event.model_dump_json().encode()))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            p, event_id, subject, payload = rows[i]
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO entities (kind, id, version, owner, name, data, manifest,"
                    " media_type, content_hash, processes, materials, search)"
                    " VALUES ('design', $1, 1, $2, $3, $4, $5, $6, $7, $8, $9,"
                    " to_tsvector('simple', $10))", f"raw-{i}", org, p.entity.name,
                    p.data_json, p.manifest, p.media_type, p.content_hash, p.processes,
                    p.materials, p.search_text)
                await conn.execute(
                    "INSERT INTO outbox (event_id, subject, entity_id, version, payload)"
                    " VALUES ($1, $2, $3, 1, $4)", event_id, subject, f"raw-{i}", payload)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await pool.close()
    return elapsed


def start_registry(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "makelocal.cli", "registry"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, 30, proc)
    if os.environ.get("BENCH_PROFILE"):  # a py-spy flame graph of the registry under load
        subprocess.Popen(["py-spy", "record", "-p", str(proc.pid), "-o",
                          os.environ["BENCH_PROFILE"], "-f", "raw", "-d", "25"])
    return proc


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    nats_server = NatsServer(work / "nats", free_port()).start()
    postgres = PostgresServer(work / "pg", free_port()).start()
    port = free_port()
    env = os.environ | {"MAKELOCAL_NATS_URL": nats_server.url,
                        "MAKELOCAL_DATABASE_URL": postgres.url,
                        "MAKELOCAL_REGISTRY_PORT": str(port), "MAKELOCAL_LOG_LEVEL": "WARNING",
                        # one key writes as fast as the registry can: no limit to measure
                        "MAKELOCAL_WRITE_RATE_PER_S": "1e9", "MAKELOCAL_WRITE_BURST": "1000000000"}
    proc = start_registry(env, port)
    try:
        await db.migrate(postgres.url, "registry", "services.registry")
        pool = await db.create_pool(postgres.url, "registry", min_size=1, max_size=1)
        _, key = await Store(pool).create_organization("bench")
        await pool.close()
        await http_writes(port, key, 200, args.concurrency, "warm")  # warm-up, not counted
        await wait_stream(nats_server.url, 200, time.perf_counter())
        n = args.writes
        start = time.perf_counter()
        elapsed, latencies = await http_writes(port, key, n, args.concurrency, "bench")
        wait_http = await wait_stream(nats_server.url, 200 + n, start)
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
        raw = await raw_transactions(postgres.url, n, args.concurrency)
        http_rate, raw_rate = n / elapsed, n / raw
        print(f"machine: {os.cpu_count()} cores")
        print(f"registry HTTP writes: {n} at concurrency {args.concurrency}: "
              f"{http_rate:.0f} writes/s, p50 {pct(latencies, 50):.1f} ms, "
              f"p99 {pct(latencies, 99):.1f} ms")
        print(f"all {n} events in JetStream {wait_http:.2f} s after the first write "
              f"({wait_http - elapsed:.2f} s after the last acknowledged)")
        print(f"raw asyncpg two-insert transactions: {raw_rate:.0f} tx/s")
        print(f"ratio registry/raw: {http_rate / raw_rate:.2f} (target >= 0.50)")
        print(f"registry process RSS: {rss:.0f} MiB")
    finally:
        stop_process(proc)
        postgres.stop()
        nats_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
