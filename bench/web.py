"""Web page benchmark: server time and bytes of the pages makers open.

NATS, PostgreSQL, the registry, the matcher, the notifier and the web page run as
processes (bench/stack.py); everything of ../shared/data is imported with the importer
users run (1,301 fab labs and makerspaces, 141 real designs), then N more designs, copies
of the real manifests under new ids and titles (as bench/fanout.py writes them, so that
they match real numbers of labs); the run waits until the matcher has indexed them all.

Then, per page kind (search, a design's page, a facility's page, and the map), over
varied queries, ids and places:
- server time: the time from sending a GET to the last byte of the answer, as an httpx
  client on loopback sees it (keep-alive connection; one request at a time), p50 / p99 /
  max; then the same with a few clients at once;
- bytes: the HTML plus every same-origin stylesheet, script and image the page
  references (each counted once), without the basemap (world-atlas), which the map loads
  after the page; the server does not compress, so these are the bytes transferred
  (headers counted too). Images that only a stylesheet names (Leaflet's layer and marker
  icons, loaded only when shown) are printed apart.

Targets (printed beside the numbers; a miss does not fail the run): p99 <= 50 ms on 2
cores; each page under 300 KB (300,000 bytes) transferred before the basemap.

    python -m bench.web [--designs 10000] [--requests 400] [--concurrency 4]
                        [--profile DIR]

--profile DIR: after the timing, each page kind is requested again while py-spy records
the web, registry and matcher processes (raw collapsed stacks in DIR); the functions
with the most samples are printed. The timing itself runs without py-spy attached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.fanout import post_designs
from bench.stack import Stack
from makelocal.embedded import free_port
from makelocal.importer import import_paths, read_all
from tests.support.helpers import DATA

TARGET_P99_MS = 50.0
TARGET_BYTES = 300_000
BASEMAP = "/static/vendor/world-atlas/"
ATLAS = Path(__file__).resolve().parents[1] / "services/web/static/vendor/world-atlas"
POPULAR_PROCESSES = ["laser-cutting", "3d-printing", "fdm", "cnc-milling", "pcb-assembly",
                     "soldering", "sewing", "woodworking"]
MATERIALS = ["pla", "abs", "petg", "plywood", "aluminium", "steel", "acrylic", "wood"]
CITIES = ["Paris", "Lyon, FR", "Berlin", "Barcelona", "Amsterdam", "London", "Nairobi",
          "Accra", "Lagos", "Cape Town", "São Paulo", "Mexico City", "Boston", "Seattle",
          "Tokyo", "Bangalore", "Jakarta", "Sydney", "Santiago", "Toronto", "Atlantis"]
RADII = [10, 25, 50, 100, 100, 100, 250, 1000]
ASSET = re.compile(r'<(?:link|script|img)\b[^>]*?\b(?:href|src)="([^"]+)"', re.I)
CSS_URL = re.compile(r'url\(\s*["\']?([^"\')]+)["\']?\s*\)')


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def templates_of_data() -> list[dict[str, Any]]:
    """The real design manifests, to copy."""
    return [json.loads(json.dumps(record.document, default=str))
            for record, body, _ in read_all([DATA])
            if body is not None and record.kind != "facility"]


async def list_all(registry_url: str, plural: str) -> list[dict[str, Any]]:
    """Every entity of a kind as the registry lists it."""
    out: list[dict[str, Any]] = []
    cursor = None
    async with httpx.AsyncClient(base_url=registry_url, timeout=30) as http:
        while True:
            params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
            page = (await http.get(f"/v1/{plural}", params=params)).raise_for_status().json()
            out.extend(page["items"])
            if not (cursor := page.get("next_cursor")):
                return out


def variant(template: dict[str, Any], n: int, copies: int) -> bytes:
    doc = dict(template)
    doc["title"] = f"{template.get('title') or 'Design'} (variant {n // copies + 2})"
    return json.dumps(doc).encode()


async def matcher_state(http: httpx.AsyncClient) -> tuple[float, float]:
    """(designs in the matcher's index, REGISTRY messages it has not processed yet)."""
    designs = pending = 0.0
    text = (await http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "makelocal_matcher_index_entities" and \
                    sample.labels.get("kind") == "design":
                designs = sample.value
            elif sample.name == "makelocal_matcher_consumer_pending":
                pending = sample.value
    return designs, pending


async def wait_indexed(port: int, designs: int, last_id: str, timeout: float) -> float:
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        while time.perf_counter() - t0 < timeout:
            held, pending = await matcher_state(http)
            if held >= designs and pending == 0 and (await http.get(
                    f"/v1/designs/{last_id}/facilities", params={"limit": 1})
            ).status_code == 200:
                return time.perf_counter() - t0
            await asyncio.sleep(0.2)
    raise SystemExit(f"the matcher did not index {designs} designs in {timeout:.0f} s")


class Pages:
    """The URLs of each page kind, varied, from the data loaded."""

    def __init__(self, rng: random.Random, design_ids: list[str], facility_ids: list[str],
                 places: list[tuple[float, float]], words: list[str]) -> None:
        self.rng = rng
        self.design_ids, self.facility_ids = design_ids, facility_ids
        self.places, self.words = places, words

    def search(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            params: dict[str, str] = {}
            kind = self.rng.random()
            if kind < 0.15:
                pass  # the front page: every design
            elif kind < 0.55:
                params["q"] = " ".join(self.rng.sample(self.words, self.rng.choice([1, 1, 2])))
            elif kind < 0.75:
                params["process"] = self.rng.choice(POPULAR_PROCESSES)
            elif kind < 0.85:
                params["material"] = self.rng.choice(MATERIALS)
            else:
                params["q"] = self.rng.choice(self.words)
                params["process"] = self.rng.choice(POPULAR_PROCESSES)
            out.append("/?" + urlencode(params) if params else "/")
        return out

    def design(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            url = f"/designs/{quote(self.rng.choice(self.design_ids))}"
            kind = self.rng.random()
            if kind < 0.3:
                out.append(url)  # no place: every lab that can make it
                continue
            if kind < 0.7:
                place = self.rng.choice(CITIES)
            else:  # where a lab is, as "Use my location" gives
                lat, lon = self.rng.choice(self.places)
                place = f"{lat + self.rng.uniform(-0.1, 0.1):.4f}, " \
                        f"{lon + self.rng.uniform(-0.1, 0.1):.4f}"
            out.append(f"{url}?{urlencode({'place': place, 'radius_km': self.rng.choice(RADII)})}")
        return out

    def facility(self, n: int) -> list[str]:
        return [f"/facilities/{quote(self.rng.choice(self.facility_ids))}" for _ in range(n)]

    def map(self, n: int) -> list[str]:
        return ["/map"] * n


class Result:
    def __init__(self) -> None:
        self.times: list[float] = []  # ms
        self.slowest: tuple[float, str] = (0.0, "")
        self.statuses: Counter[int | str] = Counter()
        self.html: list[tuple[int, str]] = []  # (bytes with headers, url)
        self.bodies: dict[str, str] = {}  # url -> html, a few, for their assets

    def line(self, name: str) -> str:
        t = self.times
        met = "meets" if pct(t, 99) <= TARGET_P99_MS else "MISSES"
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.statuses.items(), key=str))
        return (f"{name:<9} n={len(t):>5}  p50 {pct(t, 50):6.1f} ms  p99 {pct(t, 99):6.1f} ms"
                f"  max {max(t):6.1f} ms  mean {statistics.fmean(t):6.1f} ms  "
                f"(target p99 <= {TARGET_P99_MS:.0f} ms: {met}; HTTP {codes}; slowest "
                f"{self.slowest[1]})")


def alive(stack: Stack) -> str:
    gone = {name: proc.returncode for name, proc in stack.procs.items()
            if proc.poll() is not None}
    return f" (EXITED: {gone})" if gone else ""


def wire_bytes(response: httpx.Response) -> int:
    """Status line, headers and body as they came over the connection."""
    head = len(f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n")
    head += sum(len(k) + len(v) + 4 for k, v in response.headers.raw) + 2
    return head + response.num_bytes_downloaded


async def timed(client: httpx.AsyncClient, urls: list[str], result: Result) -> None:
    for url in urls:
        t0 = time.perf_counter()
        try:
            response = await client.get(url)
        except httpx.TransportError as exc:  # counted and shown, never the end of the run
            result.times.append((time.perf_counter() - t0) * 1000)
            result.statuses[type(exc).__name__] += 1
            continue
        result.times.append(elapsed := (time.perf_counter() - t0) * 1000)
        result.slowest = max(result.slowest, (elapsed, url))
        result.statuses[response.status_code] += 1
        result.html.append((wire_bytes(response), url))
        if len(result.bodies) < 50 or wire_bytes(response) >= max(b for b, _ in result.html):
            result.bodies[url] = response.text


async def run_kind(base: str, urls: list[str], concurrency: int) -> Result:
    result = Result()
    chunks = [urls[i::concurrency] for i in range(concurrency)]
    clients = [httpx.AsyncClient(base_url=base, timeout=60) for _ in chunks]
    try:
        await asyncio.gather(*(timed(c, chunk, result) for c, chunk in zip(clients, chunks,
                                                                           strict=True)))
    finally:
        for c in clients:
            await c.aclose()
    return result


class Assets:
    """Same-origin files a page references, fetched once each: {path: wire bytes}."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.sizes: dict[str, int] = {}
        self.css_images: dict[str, int] = {}

    async def of(self, html: str) -> dict[str, int]:
        out = {}
        for ref in ASSET.findall(html):
            path = same_origin(ref)
            if path is None or path.startswith(BASEMAP):
                continue
            if path not in self.sizes:
                response = await self.client.get(path)
                response.raise_for_status()
                self.sizes[path] = wire_bytes(response)
                if path.endswith(".css"):
                    await self._css_images(path, response.text)
            out[path] = self.sizes[path]
        return out

    async def _css_images(self, css_path: str, text: str) -> None:
        folder = css_path.rsplit("/", 1)[0]
        for ref in CSS_URL.findall(text):
            if ref.startswith(("#", "data:")):
                continue
            path = same_origin(ref) or f"{folder}/{ref}"
            if path not in self.css_images:
                response = await self.client.get(path)
                self.css_images[path] = wire_bytes(response) if response.is_success else 0


def same_origin(ref: str) -> str | None:
    if ref.startswith("//") or re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.I):
        return None if not ref.startswith("http://127.0.0.1") else "/" + ref.split("/", 3)[3]
    return ref if ref.startswith("/") else None


async def bytes_line(name: str, result: Result, assets: Assets) -> str:
    sizes = sorted(b for b, _ in result.html)
    largest, url = max(result.html)
    files = await assets.of(result.bodies[url])
    total = largest + sum(files.values())
    met = "meets" if total <= TARGET_BYTES else "MISSES"
    listed = ", ".join(f"{p.rsplit('/', 1)[-1]} {b / 1000:.1f}" for p, b in files.items())
    return (f"{name:<9} HTML p50 {pct(sizes, 50) / 1000:6.1f} KB, max {largest / 1000:6.1f} KB"
            f" ({url}); + assets {sum(files.values()) / 1000:.1f} KB [{listed or 'none'}]"
            f" = {total / 1000:.1f} KB at most (target < {TARGET_BYTES / 1000:.0f} KB before "
            f"the basemap: {met}; bytes as sent, compressed where the server compresses)")


def py_spy() -> str:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else "py-spy"


def attach(stack: Stack, out: Path, kind: str) -> dict[str, tuple[Path, subprocess.Popen]]:
    """py-spy recording each service process of the page, raw stacks into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    spies = {}
    for name in ("web", "registry", "matcher"):
        path = out / f"{kind}-{name}.txt"
        spies[name] = (path, subprocess.Popen(
            [py_spy(), "record", "--format", "raw", "--rate", "500", "--idle",
             "-o", str(path), "--pid", str(stack.procs[name].pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


async def profile(base: str, urls: list[str], stack: Stack, out: Path, kind: str) -> None:
    spies = await asyncio.to_thread(attach, stack, out, kind)
    await asyncio.sleep(1.5)  # attached
    t0 = time.perf_counter()
    await run_kind(base, urls, 1)
    elapsed = time.perf_counter() - t0
    for _, spy in spies.values():
        spy.send_signal(signal.SIGINT)
    for _, spy in spies.values():
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
    print(f"\nprofile of {kind} ({len(urls)} requests in {elapsed:.1f} s, py-spy at 500 Hz, "
          f"idle samples included; raw stacks in {out}):")
    for name, (path, _) in spies.items():
        print(summarize(name, path))


# the server's layers every request passes: not where a page's time goes
PLUMBING = re.compile(r"\((?:middleware|fastapi|starlette|uvicorn|http/httptools|telemetry|"
                      r"common/http\.py|asyncio/runners|<frozen|makelocal/cli)|^(?:Thread|"
                      r"_run_module|_run_code|<module>|main \(|run \(|asyncio_run)")
IDLE_LEAVES = ("Runner.run", "run_forever", "_run_once", "select", "Condition.wait",
               "Queue.get", "_worker", "wait (threading")


def summarize(name: str, path: Path, top: int = 16) -> str:
    """The functions with the most samples (inclusive) of a py-spy raw file (--idle: wall
    clock), without the samples where a thread waits (the event loop in select, idle
    worker threads): what the process spent its time on while it served the pages."""
    if not path.exists():
        return f"  {name}: no profile written"
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    wall = busy = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if "Runner.run (" in stack or "<module> (" in frames[0] or "runpy" in frames[0]:
            wall += n  # the main thread: one sample per tick
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        busy += n
        leaves["/".join(frames[-1].partition(" (")[2].split(":")[0].split("/")[-2:])] += n
        for frame in dict.fromkeys(frames):
            function, _, where = frame.partition(" (")
            short = "/".join(where.rstrip(")").split(":")[0].split("/")[-2:])
            inclusive[f"{function} ({short})"] += n
    lines = [f"  {name}: {busy} busy samples of {wall} ticks ({busy / max(wall, 1):.0%} of "
             f"the time on CPU or in a call); the functions with most of them (inclusive):"]
    shown = 0
    for function, n in inclusive.most_common():
        if shown >= top or n == busy or PLUMBING.search(function):
            continue
        lines.append(f"    {n / max(busy, 1):5.1%}  {function}")
        shown += 1
    lines.append("    by the file of the innermost frame (self time): " + ", ".join(
        f"{f} {n / max(busy, 1):.0%}" for f, n in leaves.most_common(8)))
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--designs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=400, help="per page kind")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="clients at once in the second pass (1: no second pass)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"machine: {os.cpu_count()} cores (os.cpu_count), {len(os.sched_getaffinity(0))} "
          f"usable by this process; every process of the stack and this client share them")
    stack = Stack("bench-web-")
    try:
        key = await stack.key()
        stack.ports["web"] = free_port()
        stack.env |= {"MAKELOCAL_REGISTRY_URL": f"http://127.0.0.1:{stack.ports['registry']}",
                      "MAKELOCAL_MATCHER_URL": f"http://127.0.0.1:{stack.ports['matcher']}",
                      "MAKELOCAL_NOTIFIER_URL": f"http://127.0.0.1:{stack.ports['notifier']}",
                      "MAKELOCAL_WEB_API_KEY": key}
        stack.start("registry", "matcher", "notifier")
        stack.start("web")
        registry_url = f"http://127.0.0.1:{stack.ports['registry']}"
        base = f"http://127.0.0.1:{stack.ports['web']}"

        templates = templates_of_data()
        t0 = time.perf_counter()
        summary = await import_paths([DATA], registry_url=registry_url, api_key=key,
                                     progress=False)
        print(f"imported ../shared/data in {time.perf_counter() - t0:.1f} s: "
              f"{dict(summary.counts)}")
        real_designs = [i["id"] for i in await list_all(registry_url, "designs")]
        facilities = [i["facility"] for i in await list_all(registry_url, "facilities")]
        facility_ids = [f["id"] for f in facilities]
        places = [(f["location"]["lat"], f["location"]["lon"]) for f in facilities
                  if (f.get("location") or {}).get("lat") is not None
                  and f["location"].get("lon") is not None]
        print(f"  the registry holds {len(real_designs)} real designs, {len(facility_ids)} "
              f"facilities ({len(places)} with a place)")
        generated = [f"bench-w-{i}" for i in range(args.designs)]
        bodies = [(d, variant(templates[n % len(templates)], n, len(templates)))
                  for n, d in enumerate(generated)]
        t0 = time.perf_counter()
        rate = await post_designs(stack.ports["registry"], key, bodies, None, {}) \
            if bodies else 0.0
        print(f"{len(bodies)} generated designs (copies of the {len(templates)} real "
              f"manifests, titles varied) written in {time.perf_counter() - t0:.1f} s "
              f"({rate:.0f}/s)")
        waited = await wait_indexed(stack.ports["matcher"],
                                    len(real_designs) + len(generated),
                                    generated[-1] if generated else real_designs[-1], 1800)
        print(f"matcher: {len(real_designs) + len(generated)} designs indexed "
              f"{waited:.1f} s after the last write")

        words = sorted({w.lower() for t in templates
                        for w in re.findall(r"[A-Za-z]{4,}", t.get("title") or "")})
        pages = Pages(rng, real_designs + generated, facility_ids, places, words)
        kinds = {"search": pages.search, "design": pages.design,
                 "facility": pages.facility, "map": pages.map}
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            for make in kinds.values():  # warm: templates compiled, the facility list read
                for url in make(5):
                    await client.get(url)
            await asyncio.sleep(1)

            print(f"\nserver time: GET sent -> last byte read by an httpx AsyncClient on "
                  f"loopback (keep-alive), one request at a time, {args.requests} requests "
                  f"per page kind (the map: {max(20, args.requests // 10)}):")
            results = {}
            for name, make in kinds.items():
                n = args.requests if name != "map" else max(20, args.requests // 10)
                results[name] = await run_kind(base, make(n), 1)
                print("  " + results[name].line(name) + alive(stack))

            if args.concurrency > 1:
                print(f"\nthe same with {args.concurrency} clients at once:")
                for name, make in kinds.items():
                    n = args.requests if name != "map" else max(20, args.requests // 10)
                    t0 = time.perf_counter()
                    result = await run_kind(base, make(n), args.concurrency)
                    rate = n / (time.perf_counter() - t0)
                    print("  " + result.line(name) + f"; {rate:.0f} pages/s" + alive(stack))

            print("\nbytes (the largest page of each kind seen above, its assets once):")
            assets = Assets(client)
            for name, result in results.items():
                print("  " + await bytes_line(name, result, assets))
            if assets.css_images:
                listed = ", ".join(f"{p} {b / 1000:.1f} KB"
                                   for p, b in sorted(assets.css_images.items()))
                print(f"  not counted: images only a stylesheet names, loaded only if shown:"
                      f" {listed}")
            basemap = sum(f.stat().st_size for f in ATLAS.glob("*.json"))
            print(f"  not counted: the basemap (world-atlas JSON, {basemap / 1000:.0f} KB of "
                  f"files; the map fetches land-50m.json)")

        if args.profile:
            for name, make in kinds.items():
                n = args.requests if name != "map" else max(20, args.requests // 10)
                await profile(base, make(n), stack, args.profile, name)
    finally:
        stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
