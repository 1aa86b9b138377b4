"""Chaos: the whole stack with each part its own process (the registry's HTTP API, its
outbox relay (`registry-relay`), the matcher, the notifier, PostgreSQL, NATS) under a steady
load of changes.
At random moments one part after another is killed with SIGKILL and started again. Then it
checks and prints:

- writes acknowledged vs. REGISTRY: each entity's last acknowledged version is the one
  REGISTRY holds (it keeps the latest per entity), none missing, none extra;
- match events: MATCHES vs. what one clean matcher makes of the same changes, in order;
  and the pairs left matching vs. a fresh computation from the final registry;
- webhooks: each expected match event received at least once, and no match event carried
  by two different webhook ids (a receiver deduplicating by webhook-id sees each once);
- emails: the match changes counted in the digests (one per Message-ID) vs. those expected
  for the subscription's facilities.

Zero loss is the only passing result. Changes come in rounds (new facilities and designs,
and edits of what earlier rounds made: no entity changes twice in a round); between rounds
the killing pauses until the matcher has caught up. REGISTRY keeps one message per
entity, so an entity changed twice while the matcher (or the relay) is down shows only its
last version: the end state is right, the events on the way are not those of a clean run
(see the README).

    python -m tests.support.chaos [--minutes 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors

from makelocal.cluster import Service, port_env
from makelocal.embedded import NatsServer, PostgresServer, free_port
from services.common import db
from services.registry.store import Store
from tests.conftest import TEST_SEALING_KEY
from tests.support.churn import Churn
from tests.support.helpers import (
    InProcess,
    confirm,
    eventually,
    expected_matches,
    match_events,
    reduce_matches,
    stream_messages,
    wait_ready,
)
from tests.support.hostile import Hostile
from tests.support.receivers import LoginMailServer, Receiver
from tests.support.scenario import DESCRIBED, Load, delivered_events, expected_events

PARTS = ("registry", "relay", "matcher", "matcher-2", "notifier", "notifier-2", "postgres",
         "nats")
EMAIL_FACILITIES = ["lab-0", "lab-1"]


class Stack:
    """Every part as a process that can be killed and started again."""

    def __init__(self, work: Path, smtp_port: int) -> None:
        self.work = work
        self.postgres = PostgresServer(work / "pg", free_port())
        self.nats = NatsServer(work / "nats", free_port(), log_file=work / "nats.log")
        env = {
            "MAKELOCAL_NATS_URL": self.nats.url, "MAKELOCAL_DATABASE_URL": self.postgres.url,
            "MAKELOCAL_REGISTRY_RELAY_SWEEP_S": "0.2",
            "MAKELOCAL_NOTIFIER_RETRY_SCHEDULE": "0.3,0.6,1,2,2,2,2,2,2,2,2,2",
            "MAKELOCAL_NOTIFIER_ALLOW_CIDRS": "127.0.0.0/8", "MAKELOCAL_NOTIFIER_SWEEP_S": "0.1",
            "MAKELOCAL_NOTIFIER_LEASE_MARGIN_S": "1", "MAKELOCAL_NOTIFIER_TIMEOUT_S": "2",
            "MAKELOCAL_NOTIFIER_EMAIL_LINGER_S": "0.5",
            "MAKELOCAL_NOTIFIER_EMAIL_MAX_WAIT_S": "5",
            "MAKELOCAL_NOTIFIER_SECRET_KEY": TEST_SEALING_KEY,
            "MAKELOCAL_SMTP_PORT": str(smtp_port), "MAKELOCAL_SMTP_TIMEOUT_S": "2",
            "MAKELOCAL_SMTP_USERNAME": "chaos", "MAKELOCAL_SMTP_PASSWORD": "chaos-smtp-pass",
            "MAKELOCAL_WRITE_RATE_PER_S": "1000000", "MAKELOCAL_WRITE_BURST": "1000000",
            "MAKELOCAL_MATCHER_LEASE_S": "3", "MAKELOCAL_MATCHER_HEARTBEAT_S": "1",
            # shorter than a matcher's takeover (the lease): a batch replayed by the
            # standby meets MATCHES past the window, where only the matcher's own check
            # against the stream keeps a piece from going in twice
            "MAKELOCAL_MATCHES_DUPLICATE_WINDOW_S": "2"}
        (work / "logs").mkdir(parents=True, exist_ok=True)

        def service(name: str, command: str, extra: dict[str, str]) -> Service:
            port = free_port()  # (the relay serves no HTTP: its port goes unused)
            return Service(name, command, port, env | extra | port_env(command, port),
                           work / "logs" / f"{name}.log")

        # The relay runs apart from the API (`registry-relay`, as a deployment may run
        # it), so that each dies on its own. It serves no HTTP.
        self.services = {
            "registry": service("registry", "registry", {"MAKELOCAL_REGISTRY_RELAY": "false"}),
            "relay": service("relay", "registry-relay", {}),
            # two matchers for the one partition: one live (its KV lease), one standby
            "matcher": service("matcher", "matcher", {}),
            "matcher-2": service("matcher-2", "matcher", {}),
            # two notifiers share the deliveries and the subscriptions' changes
            "notifier": service("notifier", "notifier", {}),
            "notifier-2": service("notifier-2", "notifier", {})}
        self.http = [s for name, s in self.services.items() if name != "relay"]

    def start(self) -> None:
        self.postgres.start()
        self.nats.start()
        for service in self.services.values():
            service.start()
        for service in self.http:
            service.wait_listening()

    async def ready(self, timeout: float) -> None:
        """Every service ready; of the two matchers one (the other stands by, not ready:
        it holds no index)."""
        matchers = [s for name, s in self.services.items() if name.startswith("matcher")]
        for service in self.http:
            if service not in matchers:
                await wait_ready(service.url, timeout=timeout)
        async with httpx.AsyncClient(timeout=5) as http:
            async def one_matcher() -> bool:
                for matcher in matchers:
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(f"{matcher.url}/readyz")).status_code == 200:
                            return True
                return False

            await eventually(one_matcher, timeout=timeout)

    def part(self, name: str) -> PostgresServer | NatsServer | Service:
        return {"postgres": self.postgres, "nats": self.nats}.get(name) or self.services[name]

    def kill(self, name: str) -> None:
        self.part(name).kill()

    def restart(self, name: str) -> None:
        part = self.part(name).start()  # the servers' start waits until they listen
        if isinstance(part, Service) and part in self.http:
            part.wait_listening()

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()
        self.nats.stop()
        self.postgres.stop()


@dataclass
class Monkey:
    """Kills the parts in turn at random moments and starts each again after a moment."""

    stack: Stack
    rng: random.Random
    kills: list[str] = field(default_factory=list)
    turn: int = 0

    async def run(self, until: asyncio.Event) -> None:
        while not until.is_set():
            try:
                await asyncio.wait_for(until.wait(), self.rng.uniform(1.0, 3.0))
                return
            except TimeoutError:
                pass
            part = PARTS[self.turn % len(PARTS)]
            self.turn += 1
            await asyncio.to_thread(self.stack.kill, part)
            down = self.rng.uniform(0.2, 1.5)
            await asyncio.sleep(down)
            await asyncio.to_thread(self.stack.restart, part)
            self.kills.append(f"{part} (down {down:.1f} s)")


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def check(self, what: str, expected: object, got: object, ok: bool) -> None:
        self.lines.append(f"{'ok  ' if ok else 'FAIL'} {what}: expected {expected}, got {got}")
        if not ok:
            self.failures.append(what)


async def run(minutes: float, seed: int, work: Path, say: Callable[[str], None]) -> Report:
    rng = random.Random(seed)
    report = Report()
    with LoginMailServer() as mail:
        stack = Stack(work, mail.port)
        await asyncio.to_thread(stack.start)
        try:
            await _scenario(stack, mail, minutes, rng, report, say)
        finally:
            await asyncio.to_thread(stack.stop)
    return report


async def _scenario(stack: Stack, mail: LoginMailServer, minutes: float, rng: random.Random,
                    report: Report, say: Callable[[str], None]) -> None:
    pg = stack.postgres.url
    await db.migrate(pg, "registry", "services.registry")
    pool = await db.create_pool(pg, "registry", min_size=1, max_size=1)
    _, key = await Store(pool).create_organization("chaos")
    _, hostile_key = await Store(pool).create_organization("hostile")
    await pool.close()
    auth = {"Authorization": f"Bearer {key}"}
    registry, notifier = stack.services["registry"].url, stack.services["notifier"].url
    receiver = Receiver()
    async with InProcess(receiver, None) as hooks, httpx.AsyncClient(timeout=20) as http, \
            contextlib.AsyncExitStack() as stack_exit:
        await stack.ready(60)
        hook = await http.post(f"{notifier}/v1/subscriptions", headers=auth,
                               json={"channel": "webhook", "url": f"{hooks.url}/ok"})
        assert hook.status_code == 201, hook.text
        email = await http.post(f"{notifier}/v1/subscriptions", headers=auth, json={
            "channel": "email", "address": "maker@example.org",
            "filter": {"facility_ids": EMAIL_FACILITIES}})
        assert email.status_code == 201, email.text
        async with httpx.AsyncClient(base_url=notifier, timeout=20) as at_notifier:
            await confirm(at_notifier, mail, "maker@example.org")

        load = Load(http, auth, [registry], patient=True)
        churn = Churn(http, auth, [notifier, stack.services["notifier-2"].url],
                      f"{hooks.url}")
        monkey = Monkey(stack, rng)
        # from an address of its own (127.0.0.2): failed keys are limited per address
        hostile_http = await stack_exit.enter_async_context(httpx.AsyncClient(
            timeout=20, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")))
        hostile = Hostile(hostile_http, {"Authorization": f"Bearer {hostile_key}"}, registry)
        deadline = time.monotonic() + minutes * 60
        rounds = 0
        # at least a few minutes' worth (as asked), and until every part died once
        while time.monotonic() < deadline or len(monkey.kills) < len(PARTS):
            until = asyncio.Event()
            chaos = asyncio.create_task(monkey.run(until))
            attack = asyncio.create_task(hostile.run(until))
            # Edits touch only what earlier rounds made, which the matcher has seen: each
            # entity changes once between two barriers.
            old_facilities, old_designs = list(load.facility_numbers), list(load.design_numbers)
            base = rounds * 12
            await load.facilities(range(base, base + 12))
            await load.designs(range(base * 2, base * 2 + 24))
            await load.change_facilities(min(8, len(old_facilities)), old_facilities)
            await load.change_designs(min(10, len(old_designs) // 2), old_designs)
            await churn.step(rounds)
            # the mail server refuses our login (535) for two rounds: a fault of ours
            mail.refusing = rounds in (0, 1)
            until.set()
            await chaos
            await attack
            rounds += 1
            await _caught_up(stack, http)
            say(f"round {rounds}: {load.writes} writes acknowledged, {len(monkey.kills)} kills")
        mail.refusing = False

        await _check(stack, http, load, receiver, hook.json()["secret"], mail, report, churn)
        report.check(f"hostile writes accepted or answered 500 (of {sum(hostile.answers.values())}"
                     f" answered {dict(hostile.answers)}, {hostile.lost} lost to dead parts)",
                     0, hostile.accepted() + hostile.answers[500],
                     hostile.accepted() + hostile.answers[500] == 0
                     and hostile.answers[413] > 0)
        report.lines[:0] = [
            f"{rounds} rounds over {minutes:g} min on {os.cpu_count()} cores;"
            f" {len(monkey.kills)} kills: " + ", ".join(monkey.kills),
            f"{load.writes} writes acknowledged ({load.retries} tries again after a dead part)"]


async def _caught_up(stack: Stack, http: httpx.AsyncClient) -> None:
    """Every part up, and MATCHES holding every match event the changes so far imply."""
    await stack.ready(120)
    expected = await expected_events(stack.postgres.url, "registry")

    async def complete() -> bool:
        try:
            return len(await match_events(stack.nats.url)) >= len(expected)
        except (nats.errors.Error, OSError):
            return False

    try:
        await eventually(complete, timeout=180, interval=0.5)
    except AssertionError:
        published = {m["event_id"] for m in await match_events(stack.nats.url)}
        missing = [DESCRIBED.get(e, e) for e in expected if e not in published]
        raise AssertionError(f"MATCHES holds {len(published)} of {len(expected)} expected;"
                             f" missing {len(missing)}: " + "; ".join(missing[:20])) from None


async def _check(stack: Stack, http: httpx.AsyncClient, load: Load, receiver: Receiver,
                 secret: str, mail: LoginMailServer, report: Report, churn: Churn) -> None:
    live = stack.nats.url
    # writes acknowledged vs. REGISTRY (the latest message of each entity)
    held = {m["entity_id"]: (0 if m["data"] is None else m["version"])
            for m in await stream_messages(live)}
    wrong = {e: (v, held.get(e)) for e, v in load.acknowledged.items() if held.get(e) != v}
    extra = set(held) - set(load.acknowledged)
    report.check("entities in REGISTRY at their last acknowledged version",
                 len(load.acknowledged), len(load.acknowledged) - len(wrong),
                 not wrong and not extra)

    # match events vs. a clean run of the same input
    expected = await expected_events(stack.postgres.url, "registry")
    await asyncio.sleep(2)  # anything extra, late, would show now
    published = await match_events(live)
    nc = await nats.connect(live)
    try:
        window = (await nc.jetstream().stream_info("MATCHES")).config.duplicate_window
    finally:
        await nc.close()
    report.lines.append(f"     MATCHES duplicate window {window:g} s, matcher takeover"
                        f" (lease) {stack.services['matcher'].env['MAKELOCAL_MATCHER_LEASE_S']} s")
    ids = [m["event_id"] for m in published]
    report.check("match events in MATCHES (each once) = a clean run's", len(expected),
                 f"{len(ids)} ({len(set(expected) - set(ids))} missing,"
                 f" {len(set(ids) - set(expected))} extra, {len(ids) - len(set(ids))} twice)",
                 sorted(ids) == sorted(expected))
    final, fresh = await reduce_matches(live), await expected_matches(live)
    report.check("pairs matching at the end = computed afresh from the registry", len(fresh),
                 len(final), final == fresh)

    # webhooks: each event at least once, never under two webhook ids
    async def all_delivered() -> bool:
        return delivered_events(receiver, secret).keys() >= set(expected)

    try:
        await eventually(all_delivered, timeout=180, interval=0.5)
    except AssertionError:
        pass  # counted below
    carried = delivered_events(receiver, secret)
    twice = [e for e, hooks in carried.items() if len(hooks) > 1]
    report.check("match events received by webhook (at least once)", len(expected),
                 len(set(carried) & set(expected)), set(carried) >= set(expected))
    report.check("match events under two different webhook ids", 0, len(twice), not twice)
    report.lines.append(f"     webhook calls {len(receiver.at('/ok'))}, distinct webhook ids"
                        f" {len({r.webhook_id for r in receiver.at('/ok')})}")

    # subscriptions made, disabled and enabled again during the load, through both
    # notifiers: each enabled one got every match made since it was
    enabled = [s for s in churn.subscriptions if s.since is not None]

    async def churned_delivered() -> bool:
        return not churn.missing(receiver, published)

    try:
        await eventually(churned_delivered, timeout=120, interval=0.5)
    except AssertionError:
        pass
    missing = churn.missing(receiver, published)
    report.check("subscriptions made or enabled during the load (204 receiver) that got"
                 " every match made since", len(enabled), f"{len(enabled) - len(missing)}"
                 f" (missing: {missing})" if missing else len(enabled), not missing)

    # emails: digests (one per Message-ID) count every expected change of the facilities
    wanted = sum(1 for m in published if m["facility_id"] in EMAIL_FACILITIES)

    def counted() -> int:
        digests = {m["Message-ID"]: m for m in mail.to("maker@example.org")
                   if re.match(r"makelocal: \d+ match change", m["Subject"] or "")}
        return sum(int(str(m["Subject"]).split()[1]) for m in digests.values())

    async def all_mailed() -> bool:
        return counted() >= wanted

    try:
        await eventually(all_mailed, timeout=60, interval=0.5)
    except AssertionError:
        pass
    report.check("match changes in email digests (one per Message-ID)", wanted, counted(),
                 counted() == wanted)
    # the 535s were ours to fix: no address may stay suppressed for them
    conn = await db.connect(stack.postgres.url, "notifier")
    try:
        suppressed = await conn.fetchval(
            "SELECT count(*) FROM suppressed_addresses WHERE expires_at > now()")
    finally:
        await conn.close()
    report.check(f"addresses suppressed after {mail.refused} logins refused with 535", 0,
                 suppressed, suppressed == 0 and mail.refused > 0)


async def _until_terminated(run: Coroutine[Any, Any, Report]) -> Report:
    """SIGTERM cancels the run as Ctrl-C does, so that it stops the stack it started: a
    killed script left every process of it running."""
    task, loop = asyncio.ensure_future(run), asyncio.get_running_loop()

    def terminate() -> None:
        loop.remove_signal_handler(signal.SIGTERM)
        print("SIGTERM: stopping the stack", flush=True)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    return await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="makelocal-chaos-"))
    try:
        report = asyncio.run(_until_terminated(run(args.minutes, args.seed, work, print)))
    except asyncio.CancelledError:
        print(f"terminated before the end: no report; logs in {work / 'logs'}")
        sys.exit(143)
    print("\n".join(report.lines))
    print(f"logs in {work / 'logs'}")
    print("PASS: nothing lost, nothing repeated" if not report.failures else
          f"FAIL: {', '.join(report.failures)}")
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
