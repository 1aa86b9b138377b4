"""Shared test plumbing: the registry in-process or as a child process, stream reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import uvicorn
from nats.js.errors import NotFoundError

from contracts import matches
from contracts.events import REGISTRY_STREAM
from makelocal.cluster import SERVICE_KINDS, Service, port_env
from makelocal.embedded import free_port
from services.matcher.settings import MatcherSettings
from services.registry.app import create_app
from services.registry.settings import RegistrySettings
from tests.support.paths import SHARED_DATA
from tests.support.receivers import MailServer, text_of

JSON = {"Content-Type": "application/json"}
TOML = {"Content-Type": "application/toml"}
YAML = {"Content-Type": "application/yaml"}
DATA = SHARED_DATA


async def eventually(check: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll an async check until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


async def _stream(nats_url: str, stream: str) -> list[Any]:
    """Every message the stream holds, oldest first (raw)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return []
        out: list[Any] = []
        if info.state.messages == 0:
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                out.append(await js.get_msg(stream, seq))
            except NotFoundError:
                continue
        return out
    finally:
        await nc.close()


async def stream_messages(nats_url: str, stream: str = REGISTRY_STREAM) -> list[dict[str, Any]]:
    """Every message the stream holds, oldest first, with its Nats-Msg-Id (MATCHES:
    decoded)."""
    out = []
    for msg in await _stream(nats_url, stream):
        body = (matches.decode(msg.data, msg.headers) if stream == matches.MATCHES_STREAM
                else json.loads(msg.data))
        body["_msg_id"] = (msg.headers or {}).get("Nats-Msg-Id")
        body["_seq"], body["_time"] = msg.seq, msg.time
        out.append(body)
    return out


async def match_events(nats_url: str) -> list[dict[str, Any]]:
    """Every pair MATCHES holds, oldest first, as a MatchEvent (with its message's
    Nats-Msg-Id and sequence)."""
    out = []
    for change in await stream_messages(nats_url, matches.MATCHES_STREAM):
        for event in matches.match_events(change):
            event["_msg_id"], event["_seq"] = change["_msg_id"], change["_seq"]
            event["_time"] = change["_time"]
            out.append(event)
    return out


class InProcess:
    """A service's app served by uvicorn on a free port, inside the test's event loop."""

    def __init__(self, app: Any, settings: Any) -> None:
        self.port = free_port()
        self.settings = settings
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_config=None, access_log=False,
                                                    lifespan="on"))
        self.task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> InProcess:
        self.task = asyncio.create_task(self.server.serve())
        await eventually(self._started, timeout=20)
        return self

    async def _started(self) -> bool:
        if self.task is not None and self.task.done():
            self.task.result()
        return self.server.started

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)


@contextlib.asynccontextmanager
async def notifier_api(settings: Any, resolver: Any = None,
                       timeout: float = 10) -> AsyncIterator[httpx.AsyncClient]:
    """A notifier served in this loop, ready, and a client of its API."""
    from services.notifier.app import create_app

    app = create_app(settings) if resolver is None else create_app(settings, resolver)
    async with InProcess(app, settings) as running, httpx.AsyncClient(
            base_url=running.url, timeout=timeout) as http:
        await wait_ready(running.url)
        yield http


def InProcessRegistry(settings: RegistrySettings) -> InProcess:
    return InProcess(create_app(settings), settings)


def InProcessMatcher(settings: MatcherSettings) -> InProcess:
    from services.matcher.app import create_app as create_matcher

    return InProcess(create_matcher(settings), settings)


async def reduce_matches(nats_url: str) -> set[tuple[str, str]]:
    """Replay MATCHES: check found/withdrawn alternate per pair; the pairs left found."""
    state: dict[tuple[str, str], str] = {}
    for event in await match_events(nats_url):
        pair = (event["design_id"], event["facility_id"])
        kind = event["type"].split(".")[1]
        assert state.get(pair, "withdrawn") != kind, f"{kind} twice in a row for {pair}"
        state[pair] = kind
    return {pair for pair, kind in state.items() if kind == "found"}


async def expected_matches(nats_url: str) -> set[tuple[str, str]]:
    """Every matching pair, computed afresh from REGISTRY's final content."""
    from contracts.models import Design, Facility
    from services.matcher.index import all_pairs
    from services.matcher.profiles import design_profile, facility_profile

    designs, facilities = [], []
    for event in await stream_messages(nats_url):
        if event["data"] is None:
            continue
        if event["type"].startswith("design"):
            designs.append(design_profile(Design.model_validate(event["data"]),
                                          event["version"]))
        else:
            facilities.append(facility_profile(Facility.model_validate(event["data"]),
                                               event["version"]))
    return all_pairs(designs, facilities)


async def settled(registry: InProcess, timeout: float = 30,
                  silent: set[tuple[str, str]] = frozenset()) -> set[tuple[str, str]]:
    """Wait until every acknowledged write is in REGISTRY and MATCHES reduces to what the
    final registry state says (less `silent` pairs, indexed without events); return it."""
    nats_url = registry.settings.nats_url
    store = registry.app.state.store

    async def check() -> set | None:
        if (await store.outbox_backlog())[0]:
            return None
        expected = await expected_matches(nats_url)
        got = await reduce_matches(nats_url)
        return expected if got == expected - silent else None

    try:
        return await eventually(check, timeout=timeout, interval=0.2)
    except AssertionError:
        got, expected = await reduce_matches(nats_url), await expected_matches(nats_url)
        wrong = sorted(got ^ (expected - silent))[:10]
        raise AssertionError(f"MATCHES has {wrong} wrong") from None


async def registry_rows(settings: RegistrySettings, sql: str) -> list[asyncpg.Record]:
    """The rows a query reads in the registry's schema, on a connection of its own."""
    conn = await asyncpg.connect(settings.database_url,
                                 server_settings={"search_path": settings.registry_db_schema})
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def wait_ready(url: str, timeout: float = 30) -> None:
    """Until the service's /readyz answers 200 (the matcher: its index is loaded)."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        async def ready() -> bool:
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, timeout=timeout)


async def _done(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None


class ServiceProcess(Service):
    """A service (`makelocal <command>`) as a real child process, to be killed for real:
    makelocal.cluster.Service on a free port, with waits that leave the test's event loop
    free (in-process services may have to answer meanwhile)."""

    def __init__(self, env: dict[str, str], log: Path, command: str = "registry") -> None:
        port = free_port()
        super().__init__(command, command, port, env | port_env(command, port), log)

    def start(self, wait: bool = True, **extra_env: str) -> ServiceProcess:
        """Start it; with `wait`, block until it listens (only where nothing in this event
        loop must answer meanwhile: else use `wait=False` and `await listening()`)."""
        super().start(**extra_env)
        if wait and self.command in SERVICE_KINDS:
            self.wait_listening(30)
        return self

    async def listening(self, timeout: float = 30) -> None:
        async def open_() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.command} exited with {self.proc.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            return True

        await eventually(open_, timeout=timeout)

    async def wait_dead(self, timeout: float = 20) -> int:
        """The exit status, waiting without blocking the loop (in-process services run)."""
        proc = self.proc
        assert proc is not None
        await eventually(lambda: _done(proc), timeout=timeout)
        return proc.returncode


async def publish_matches(nats_url: str, pairs: list[tuple[str, str]],
                          kind: str = "found", msg_id: bool = True,
                          facility_lat: float | None = None,
                          facility_lon: float | None = None,
                          design_processes: tuple[str, ...] = ()) -> list[str]:
    """Pairs as the matcher publishes them: one match change per design (version 1) with
    its facilities (version 1), pipelined; returns each pair's event id. Without `msg_id`,
    JetStream cannot drop a repeat: as a replay after its duplicate window."""
    # here, not at the top: builders imports tests.conftest, which imports this module
    from tests.support.builders import match_pieces

    by_design: dict[str, list[str]] = {}
    for design_id, facility_id in pairs:
        by_design.setdefault(design_id, []).append(facility_id)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        futures = []
        for design_id, facilities in by_design.items():
            for piece in match_pieces(design_id, facilities, kind=kind,
                                      score=0.9 if kind == "found" else 0.0,
                                      design_processes=design_processes, lat=facility_lat,
                                      lon=facility_lon, max_payload=nc.max_payload):
                headers = piece.headers
                if not msg_id:
                    del headers["Nats-Msg-Id"]
                futures.append(await js.publish_async(piece.subject, piece.payload,
                                                      headers=headers))
        await asyncio.gather(*futures)
        return [matches.match_event_id(kind, d, 1, f, 1) for d, f in pairs]  # type: ignore[arg-type]
    finally:
        await nc.close()


async def metric(http: Any, name: str) -> float:
    """A metric's value (without labels) from a service's /metrics; 0 when absent."""
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def consumed(http: Any, n: int) -> bool:
    """Whether the notifier has read at least n match pairs."""
    return await metric(http, "makelocal_notifier_pairs_consumed_total") >= n


async def confirm(http: Any, mail: MailServer, address: str) -> None:
    """Follow the verification link mailed to `address` (the notifier at `http`) and press
    its page's button, as a person does."""
    await eventually(lambda: has_mail(mail, address, 1))
    link = re.search(r"(http://\S+/v1/email/verify\?token=\S+)", text_of(mail.to(address)[0]))
    assert link is not None
    url = link.group(1).replace("http://127.0.0.1:8003", str(http.base_url))
    assert '<form method="post"' in (await http.get(url)).text
    page = await http.post(url)
    assert page.status_code == 200 and "confirmed" in page.text


async def has_mail(mail: MailServer, address: str, n: int) -> bool:
    return len(mail.to(address)) >= n


# the secret part of what we issue: `mlk_<key id>_<secret>` and `whsec_<secret>`; the
# secret's own alphabet has "_", so it is everything after the fixed prefix, not the last
# "_"-separated piece (which can be a character or two, found in any log by chance)
_ISSUED = re.compile(r"^(?:mlk_[0-9a-f]{16}_|whsec_)(.+)$")


def assert_never_logged(issued: Sequence[str], logged: str) -> None:
    """Neither an issued key or secret, nor its secret part alone, appears in the logs."""
    for secret in issued:
        match = _ISSUED.match(secret)
        assert match, "not a key or secret that makelocal issues"
        assert match.group(1) not in logged  # the whole is checked with its part


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 90) -> str:
    """What a process printed until a line holding `marker` (non-blocking reads, bounded
    in time); AssertionError with all it printed if the marker never comes."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if marker in line:
                return "".join(seen)
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"{marker!r} not printed; got:\n{''.join(seen)}")
