"""The relay's lock is a lease: a leader that goes silent while its connection stays open
(frozen, or cut off half-open) loses it within seconds, and a standby publishes on."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry

from services.registry.app import relay_of
from services.registry.relay import RelayMetrics
from services.registry.settings import RegistrySettings
from services.registry.store import Store
from tests.support.builders import design_toml, write_design
from tests.support.helpers import ServiceProcess, eventually, registry_rows, stream_messages

pytestmark = pytest.mark.asyncio(loop_scope="session")
LEASE_S = 3.0


async def published(settings: RegistrySettings, count: int) -> bool:
    rows = await registry_rows(settings, "SELECT published_at FROM outbox")
    return len(rows) == count and all(r["published_at"] for r in rows)


async def test_a_frozen_leader_loses_the_lock_within_its_lease(
        settings: RegistrySettings, registry_env: dict[str, str], store: Store,
        tmp_path: Path) -> None:
    _, key = await store.create_organization("Lab")
    env = registry_env | {"MAKELOCAL_REGISTRY_RELAY_LEASE_S": str(LEASE_S)}
    leader = ServiceProcess(env, tmp_path / "a.log", "registry-relay").start()
    standby = None
    try:
        for i in range(3):
            await write_design(store, key, f"d-{i}", design_toml(f"D {i}"))
        await eventually(lambda: published(settings, 3))
        standby = ServiceProcess(env, tmp_path / "b.log", "registry-relay").start()
        await asyncio.sleep(0.5)  # the standby polls for the lock now
        # The leader stops answering, but its process, sockets and session stay: to the
        # database it is an idle client holding the lock, as behind a half-open connection
        leader.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        await asyncio.sleep(0.2)
        for i in range(3, 8):
            await write_design(store, key, f"d-{i}", design_toml(f"D {i}"))
        # Taken over within the lease and a little: not when TCP gives up, hours later
        await eventually(lambda: published(settings, 8), timeout=LEASE_S + 5)

        # The old leader, thawed, finds its session gone and publishes nothing again
        leader.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        await asyncio.sleep(1.5)
        for i in range(8, 10):
            await write_design(store, key, f"d-{i}", design_toml(f"D {i}"))
        await eventually(lambda: published(settings, 10))
        messages = await stream_messages(settings.nats_url)
        assert [m["entity_id"] for m in messages] == [f"d-{i}" for i in range(10)]
        assert messages[-1]["_seq"] == 10
    finally:
        if leader.proc is not None and leader.proc.poll() is None:
            leader.proc.send_signal(signal.SIGCONT)
        leader.stop()
        if standby is not None:
            standby.stop()


class StallingProxy:
    """A TCP proxy to PostgreSQL that can stall the connections it carries: they stay
    open at both ends but carry nothing more, as a connection whose path went dark."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.stalled = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.held: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> StallingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.held:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def stall(self) -> None:
        """Stall the connections open now; later ones are carried as usual."""
        self.stalled.set()
        self.stalled = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.held += [writer, up_writer]
        stalled = self.stalled
        pumps = [asyncio.create_task(self._pump(reader, up_writer)),
                 asyncio.create_task(self._pump(up_reader, writer))]
        await asyncio.wait([*pumps, asyncio.create_task(stalled.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:  # stalled (or one side closed): nothing more is carried
            pump.cancel()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()


async def test_a_relay_behind_a_stalled_connection_gets_going_again_within_its_lease(
        settings: RegistrySettings, store: Store) -> None:
    _, key = await store.create_organization("Lab")
    upstream = urlsplit(settings.database_url)
    async with StallingProxy(upstream.port or 5432) as proxy:
        via_proxy = settings.model_copy(update={
            "database_url": upstream._replace(
                netloc=f"{upstream.username}@127.0.0.1:{proxy.port}").geturl(),
            "registry_relay_lease_s": LEASE_S})
        relay = relay_of(via_proxy, RelayMetrics(CollectorRegistry()))
        running = asyncio.create_task(relay.run())
        try:
            await write_design(store, key, "d-0", design_toml("D 0"))
            await eventually(lambda: published(settings, 1))
            # The relay's connection goes dark: its queries get no answer, and the
            # server hears nothing more from it (no reset, no FIN on either side).
            proxy.stall()
            for i in range(1, 4):
                await write_design(store, key, f"d-{i}", design_toml(f"D {i}"))
            # The relay gives up on it, the server ends the session (and so the lock),
            # and the relay, connected anew, publishes: within the lease and a little.
            await eventually(lambda: published(settings, 4), timeout=LEASE_S + 5)
            messages = await stream_messages(settings.nats_url)
            assert [m["entity_id"] for m in messages] == [f"d-{i}" for i in range(4)]
        finally:
            running.cancel()
            # bounded: a relay stuck on the stalled connection must not hang the test
            await asyncio.wait({running}, timeout=LEASE_S)
