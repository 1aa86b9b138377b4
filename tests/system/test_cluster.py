"""Production's topology on one machine (makelocal.cluster): three clustered NATS nodes
with every stream replicated three times, two registries, two matcher partitions and two
notifiers. Under a steady load of changes, one NATS node and one process of each service
are killed with SIGKILL, the services are started again while the node is still down, and
then the node. After: MATCHES holds exactly the match events that one matcher computes
from the same REGISTRY input (each once), every one reaches the webhook subscriber, and
no two deliveries carry the same match event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import nats.errors

from makelocal.cluster import Cluster, ClusterPorts
from services.registry.settings import RegistrySettings
from tests.conftest import TEST_SEALING_KEY, auth
from tests.support.helpers import (
    assert_never_logged,
    eventually,
    expected_matches,
    match_events,
    reduce_matches,
    wait_ready,
)
from tests.support.receivers import MailServer, Receiver
from tests.support.scenario import DESCRIBED, Load, delivered_events, expected_events


async def test_losing_a_node_and_one_process_of_each_service_loses_and_repeats_nothing(
        tmp_path: Path, settings: RegistrySettings, org: tuple[str, str],
        receiver: tuple[Receiver, str], mail_server: MailServer) -> None:
    app, base = receiver
    cluster = Cluster(tmp_path / "cluster", ClusterPorts.free(), {
        "MAKELOCAL_DATABASE_URL": settings.database_url,
        "MAKELOCAL_REGISTRY_DB_SCHEMA": settings.registry_db_schema,
        "MAKELOCAL_REGISTRY_RELAY_SWEEP_S": "0.2",
        "MAKELOCAL_NOTIFIER_DB_SCHEMA": f"n_{settings.registry_db_schema}",
        "MAKELOCAL_NOTIFIER_KEYS_SCHEMA": settings.registry_db_schema,
        "MAKELOCAL_NOTIFIER_RETRY_SCHEDULE": "0.3,0.6,1,2,4",
        "MAKELOCAL_NOTIFIER_ALLOW_CIDRS": "127.0.0.0/8", "MAKELOCAL_NOTIFIER_SWEEP_S": "0.1",
        "MAKELOCAL_NOTIFIER_LEASE_MARGIN_S": "1", "MAKELOCAL_NOTIFIER_TIMEOUT_S": "2",
        "MAKELOCAL_NOTIFIER_SECRET_KEY": TEST_SEALING_KEY,
        "MAKELOCAL_SMTP_PORT": str(mail_server.port)})
    await asyncio.to_thread(cluster.start)
    try:
        for service in cluster.of("matcher") + cluster.of("notifier"):
            await wait_ready(service.url, timeout=60)
        key = auth(org[1])
        async with httpx.AsyncClient(timeout=20) as http:
            hook = await http.post(f"{cluster.of('notifier')[1].url}/v1/subscriptions",
                                   headers=key, json={"channel": "webhook", "url": f"{base}/ok"})
            assert hook.status_code == 201, hook.text
            load = Load(http, key, [s.url for s in cluster.of("registry")])
            await load.facilities(range(20))
            await load.designs(range(0, 10))
            # mid-way: a NATS node and one process of each service die at once
            for victim in ("registry-0", "matcher-0", "notifier-0"):
                cluster.service(victim).kill()
            cluster.nodes[0].kill()
            load.registries = [cluster.service("registry-1").url]
            await load.designs(range(10, 16))
            for victim in ("registry-0", "matcher-0", "notifier-0"):
                cluster.service(victim).start()
            await load.designs(range(16, 20))
            cluster.nodes[0].launch()
            for victim in ("registry-0", "matcher-0", "notifier-0"):
                await asyncio.to_thread(cluster.service(victim).wait_listening)
            load.registries = [s.url for s in cluster.of("registry")]
            # REGISTRY keeps the latest version of each entity only: a matcher that is
            # down while an entity changes twice sees the last version alone (the end
            # state is the same, the events on the way are not). So the edits wait until
            # both partitions have caught up with what the kill interrupted.
            await caught_up(cluster.nodes[1].url, settings, cluster)
            await load.change_facilities(8)
            await load.change_designs(6)

        expected = await caught_up(cluster.nodes[1].url, settings, cluster)
        assert len(expected) > 100  # the input makes real fan-outs
        live = cluster.nodes[1].url
        await asyncio.sleep(2)  # anything extra, late, would show now
        published = [m["event_id"] for m in await match_events(live)]
        assert sorted(published) == sorted(expected)
        assert await reduce_matches(live) == await expected_matches(live)

        async def all_delivered() -> bool:
            return delivered_events(app, hook.json()["secret"]).keys() >= set(expected)

        await eventually(all_delivered, timeout=120, interval=0.5)
        carried_by = delivered_events(app, hook.json()["secret"])
        assert set(carried_by) == set(expected)
        twice = {event: ids for event, ids in carried_by.items() if len(ids) > 1}
        assert twice == {}, "match events carried by two different deliveries"
        logged = "\n".join(f.read_text(errors="replace") for f in cluster.logs.glob("*.log"))
        assert "change applied" in logged  # the services did log, to these files
        assert_never_logged([org[1], hook.json()["secret"]], logged)
    finally:
        await asyncio.to_thread(cluster.stop)


async def caught_up(live: str, settings: RegistrySettings, cluster: Cluster) -> list[str]:
    """Until MATCHES holds every match event the registry's changes so far imply; those."""
    expected = await expected_events(settings.database_url, settings.registry_db_schema)

    async def complete() -> bool:
        try:
            return len(await match_events(live)) >= len(expected)
        except nats.errors.Error:  # the cluster electing leaders after a node's restart
            return False

    try:
        await eventually(complete, timeout=90, interval=0.5)
    except AssertionError:
        raise AssertionError(await _diagnosis(cluster, live, expected)) from None
    return expected


async def _diagnosis(cluster: Cluster, live: str, expected: list[str]) -> str:
    """What each matcher has done, for a failure message."""
    published = await match_events(live)
    missing = set(expected) - {m["event_id"] for m in published}
    lines = [f"MATCHES holds {len(published)} events, {len(expected)} expected; missing "
             f"{len(missing)}", *sorted(DESCRIBED.get(m, m) for m in missing)]
    async with httpx.AsyncClient(timeout=5) as http:
        for matcher in cluster.of("matcher"):
            try:
                text = (await http.get(f"{matcher.url}/metrics")).text
            except httpx.HTTPError as exc:
                lines.append(f"{matcher.name}: {exc!r}")
                continue
            lines += [f"{matcher.name}: {line}" for line in text.splitlines() if line.startswith(
                tuple(f"makelocal_matcher_{m}" for m in ("events", "matches", "consumer",
                                                        "errors")))]
    return "\n".join(lines)


