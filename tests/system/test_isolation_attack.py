"""Adversarial review of issue 15 ("no tenant can stop, starve or forge for another").

Each test here is a way one tenant still stops or starves another; all use the real
services, the real PostgreSQL and NATS of tests/conftest.py."""

from __future__ import annotations

import asyncio
import os
import resource
import time

import httpx

from services.registry.settings import RegistrySettings
from services.registry.store import Store
from tests.conftest import StartRegistry, auth
from tests.support.builders import design_doc
from tests.support.helpers import JSON, YAML, InProcess, InProcessRegistry, eventually
from tests.support.hostile import made_up_key, wide_yaml


def registry_with(settings: RegistrySettings, **extra: object) -> InProcess:
    return InProcessRegistry(RegistrySettings(**settings.model_dump() | extra))


# 1. The failed-key limit is per client address, and it is checked before a *valid* key
#    is looked up: tenants behind one address (a load balancer, an ingress, a NAT, a
#    corporate proxy: every client of a registry behind a reverse proxy) share one bucket,
#    so one tenant's bad keys lock every other tenant out.

async def test_bad_keys_of_one_tenant_do_not_lock_out_another_tenant_on_the_registry(
        settings: RegistrySettings, store: Store) -> None:
    _, victim_key = await store.create_organization("Victim Lab")
    async with registry_with(settings, auth_failures_per_min=5) as registry, \
            httpx.AsyncClient(base_url=registry.url, timeout=30) as http:
        for _ in range(6):  # the attacker (or a misconfigured client) behind the same proxy
            await http.post("/v1/designs", content=design_doc("x", ["3DP"]),
                            headers=JSON | auth(made_up_key()))
        # a different tenant, valid key, first write of the day (not in the cache)
        made = await http.post("/v1/designs?id=victim", content=design_doc("Victim", ["3DP"]),
                               headers=JSON | auth(victim_key))
        assert made.status_code == 201, (made.status_code, made.text)


async def test_bad_keys_of_one_tenant_do_not_lock_out_another_tenant_on_the_notifier(
        notifier: InProcess, org: tuple[str, str]) -> None:
    # the notifier never caches a verified key: every request of every tenant passes the
    # address's failure bucket first
    async with httpx.AsyncClient(base_url=notifier.url, timeout=30) as http:
        for _ in range(21):
            await http.get("/v1/subscriptions", headers=auth(made_up_key()))
        mine = await http.get("/v1/subscriptions", headers=auth(org[1]))
        assert mine.status_code == 200, (mine.status_code, mine.text)


# 2. The reader pool (2 children per process) is shared first come, first served by every
#    tenant: one tenant with a valid key and its generous write limit (100/s, burst 1000)
#    keeps both readers busy with documents that take seconds, and every other tenant's
#    small document waits behind them and gets 503 after the wall time.

async def test_one_tenant_busy_readers_do_not_starve_another_tenant(
        settings: RegistrySettings, store: Store, org: tuple[str, str]) -> None:
    _, victim_key = await store.create_organization("Victim Lab")
    wide = wide_yaml()
    async with registry_with(settings) as registry, \
            httpx.AsyncClient(base_url=registry.url, timeout=120) as attacker, \
            httpx.AsyncClient(base_url=registry.url, timeout=120) as victim:
        async def hog(i: int) -> int:
            response = await attacker.post(f"/v1/designs?id=wide{i}", content=wide,
                                           headers=YAML | auth(org[1]))
            return response.status_code

        hogs = [asyncio.create_task(hog(i)) for i in range(8)]
        await asyncio.sleep(1.0)  # the attacker's bodies are in and queued for readers
        start = time.perf_counter()
        made = await victim.post("/v1/designs?id=small", content=design_doc("Small", ["3DP"]),
                                 headers=JSON | auth(victim_key))
        took = time.perf_counter() - start
        statuses = await asyncio.gather(*hogs)
    assert made.status_code == 201 and took < 3.0, (
        made.status_code, f"{took:.1f} s", made.text[:200], statuses)


# 3. A body read has no deadline: a valid key's request may trickle its body for ever,
#    each one holding a connection (a file descriptor, a task). With enough of them the
#    process can accept no connection at all: every tenant is stopped. Shown with a low
#    descriptor limit put on the registry process (the same happens at any limit, it only
#    takes more connections).





async def test_slow_bodies_of_one_tenant_do_not_stop_the_registry(
        start_registry: StartRegistry, store: Store, org: tuple[str, str]) -> None:
    _, victim_key = await store.create_organization("Victim Lab")
    service = await start_registry({})
    assert service.proc is not None
    pid = service.proc.pid
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:  # warm up
        made = await http.post("/v1/designs?id=warm", content=design_doc("Warm", ["3DP"]),
                               headers=JSON | auth(org[1]))
        assert made.status_code == 201, made.text
    held = len(os.listdir(f"/proc/{pid}/fd"))
    slow = 60
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (held + slow, held + slow))
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:  # the control
        made = await http.post("/v1/designs?id=control", content=design_doc("C", ["3DP"]),
                               headers=JSON | auth(victim_key))
        assert made.status_code == 201, made.text  # (the limit alone stops nothing)
    writers: list[asyncio.StreamWriter] = []
    try:
        for i in range(slow + 10):  # (a margin: fds the count above may have missed)
            _, writer = await asyncio.open_connection("127.0.0.1", service.port)
            writer.write((f"POST /v1/designs?id=slow{i} HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer {org[1]}\r\n"
                          "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
                          ).encode())
            await writer.drain()
            writers.append(writer)
        await asyncio.sleep(2.0)  # (a few bytes more now and then would do the same)
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
            try:
                made = await http.post("/v1/designs?id=victim", content=design_doc("V", ["3DP"]),
                                       headers=JSON | auth(victim_key))
                outcome: object = made.status_code
            except httpx.HTTPError as exc:
                outcome = repr(exc)
        assert outcome == 201, outcome
    finally:
        for writer in writers:
            writer.close()


# 4. A client that goes away in the middle of its body (any slow or flaky client, or one
#    doing it on purpose, many times a second) is logged as an unhandled error with a
#    traceback, twice, and counted as a 5xx in makelocal_registry_http_requests_total: a
#    tenant can fill the logs with tracebacks and the 5xx rate (dashboards, SLOs) with
#    errors, for nothing that went wrong on our side. It should be a quiet 4xx (499).

async def test_a_client_gone_mid_body_is_no_server_error(
        settings: RegistrySettings, org: tuple[str, str], caplog: object) -> None:
    async with registry_with(settings) as registry:
        for i in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", registry.port)
            writer.write((f"POST /v1/designs?id=gone{i} HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer {org[1]}\r\n"
                          "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
                          ).encode())
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=registry.url, timeout=10) as http:
            metrics = (await http.get("/metrics")).text
    server_errors = [line for line in metrics.splitlines()
                     if line.startswith("makelocal_registry_http_requests_total")
                     and '"5xx"' in line and not line.rstrip().endswith(" 0.0")]
    unhandled = [r.getMessage() for r in caplog.records  # type: ignore[attr-defined]
                 if r.levelname == "ERROR"]
    assert not server_errors and not unhandled, (server_errors, unhandled[:2])


# 5. A reader child killed from outside in the middle of a valid document (the kernel's
#    OOM killer choosing the biggest process under memory pressure, an operator, a
#    container runtime) is reported to the tenant as the document's own fault: a permanent
#    422 too_complex ("the reader died reading it (-9)"), so a well-behaved client drops a
#    valid write instead of retrying. Only our own limits (SIGXCPU, the wall time, the
#    address-space limit) say anything about the document; SIGKILL from elsewhere should be
#    a 503 with Retry-After (or one retry in a fresh child).

def _reader_children() -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process().children(recursive=True)
            if "services.common.sandbox" in " ".join(c.cmdline())]


async def test_a_reader_killed_from_outside_does_not_refuse_a_valid_document(
        settings: RegistrySettings, org: tuple[str, str]) -> None:
    import signal

    document = wide_yaml(800_000)  # valid, its event fits; about 2 s to read
    async with registry_with(settings) as registry, \
            httpx.AsyncClient(base_url=registry.url, timeout=60) as http:
        sent = asyncio.create_task(http.post("/v1/designs?id=valid", content=document,
                                             headers=YAML | auth(org[1])))
        children = await eventually(lambda: _async(_reader_children()), timeout=10)
        await asyncio.sleep(0.5)  # reading it
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        response = await sent
    assert response.status_code in (201, 503), (response.status_code, response.text[:300])


async def _async(value: object) -> object:
    return value
