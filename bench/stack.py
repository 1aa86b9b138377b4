"""The stack as the benchmarks run it: NATS and PostgreSQL in a new folder, the registry,
the matcher and the notifier as processes on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from makelocal.embedded import NatsServer, PostgresServer, free_port, wait_for_port
from services.common import db
from services.registry.store import Store

SERVICES = ("registry", "matcher", "notifier")


class Stack:
    def __init__(self, prefix: str) -> None:
        work = Path(tempfile.mkdtemp(prefix=prefix))
        self.nats = NatsServer(work / "nats", free_port()).start()
        self.postgres = PostgresServer(work / "pg", free_port()).start()
        self.ports = {name: free_port() for name in SERVICES}
        self.env = os.environ | {
            "MAKELOCAL_NATS_URL": self.nats.url, "MAKELOCAL_DATABASE_URL": self.postgres.url,
            "MAKELOCAL_LOG_LEVEL": "WARNING", "MAKELOCAL_NOTIFIER_ALLOW_CIDRS": "127.0.0.0/8",
            # one key posts every design: the per-key write limit would cap the rates
            "MAKELOCAL_WRITE_RATE_PER_S": "1000000", "MAKELOCAL_WRITE_BURST": "1000000",
            "MAKELOCAL_REGISTRY_WRITES_IN_FLIGHT_PER_KEY": "1000000",
            # one benchmark organization holds every subscription
            "MAKELOCAL_NOTIFIER_MAX_SUBSCRIPTIONS_PER_ORG": "1000000",
            **{f"MAKELOCAL_{k.upper()}_PORT": str(v) for k, v in self.ports.items()}}
        self.procs: dict[str, subprocess.Popen] = {}

    async def key(self) -> str:
        """An organization's API key, made in the registry's schema."""
        return (await self.keys(1))[0]

    async def keys(self, n: int) -> list[str]:
        """The API keys of n organizations, made in the registry's schema."""
        await db.migrate(self.postgres.url, "registry", "services.registry")
        pool = await db.create_pool(self.postgres.url, "registry", min_size=1, max_size=1)
        try:
            return [(await Store(pool).create_organization(f"bench {i}"))[1]
                    for i in range(n)]
        finally:
            await pool.close()

    def start(self, *names: str) -> None:
        for name in names or SERVICES:
            self.procs[name] = self._process(name, self.ports[name])

    def add(self, name: str) -> int:
        """Another process of a service (they share its consumer and database); its
        port."""
        port = free_port()
        self.procs[f"{name}-{port}"] = self._process(name, port)
        return port

    def _process(self, name: str, port: int) -> subprocess.Popen:
        env = self.env | {f"MAKELOCAL_{name.upper()}_PORT": str(port)}
        proc = subprocess.Popen([sys.executable, "-m", "makelocal.cli", name], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, 60, proc)
        return proc

    def stop(self, *names: str) -> None:
        from makelocal.embedded import stop_process

        for name in names or list(self.procs):
            stop_process(self.procs.pop(name))
        if not names:
            self.postgres.stop()
            self.nats.stop()
