"""Production's topology on one machine: three NATS servers clustered with JetStream
(every stream and bucket replicated three times), two registries, two matcher partitions
and two notifiers, each a separate process. `makelocal up --cluster` runs it, and the
cluster test kills parts of it with SIGKILL and restarts them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from makelocal import nats_auth
from makelocal.embedded import (
    NatsServer,
    free_port,
    stop_process,
    wait_for_port,
)

NODES, PARTITIONS, INSTANCES = 3, 2, 2
SERVICE_KINDS = ("registry", "matcher", "notifier")  # the services that serve HTTP


def port_env(command: str, port: int) -> dict[str, str]:
    """The variable giving a service its HTTP port (none for the relay or the mail sink,
    which take no such variable)."""
    return {f"MAKELOCAL_{command.upper()}_PORT": str(port)} if command in SERVICE_KINDS else {}


@dataclass
class Service:
    """One service process (`makelocal <command> <args>`, or another `program`), to start,
    kill and start again."""

    name: str
    command: str
    port: int
    env: dict[str, str]
    log: Path
    args: list[str] = field(default_factory=list)
    program: list[str] | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, **extra_env: str) -> Service:
        """Start it (`extra_env` for this start only, a crash point say); no waiting."""
        self.proc = subprocess.Popen(
            self.program or [sys.executable, "-m", "makelocal.cli", self.command, *self.args],
            env=os.environ | self.env | extra_env, stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_listening(self, timeout: float = 60) -> None:
        wait_for_port(self.port, timeout, self.proc)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL to the process and any workers it started (its own session): no
        shutdown code runs, as when a machine dies."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@dataclass
class ClusterPorts:
    nats: list[int]
    routes: list[int]
    monitors: list[int]
    registry: list[int]
    matcher: list[int]
    notifier: list[int]

    @classmethod
    def from_base(cls, nats: int, routes: int, monitor: int, registry: int, matcher: int,
                  notifier: int) -> ClusterPorts:
        """Each node or instance one port above (NATS) or ten above (services) the last:
        the first of each is where the single-process stack puts it."""
        return cls(nats=[nats + i for i in range(NODES)],
                   routes=[routes + i for i in range(NODES)],
                   monitors=[monitor + i for i in range(NODES)],
                   registry=[registry + 10 * i for i in range(INSTANCES)],
                   matcher=[matcher + 10 * i for i in range(PARTITIONS)],
                   notifier=[notifier + 10 * i for i in range(INSTANCES)])

    @classmethod
    def free(cls) -> ClusterPorts:
        def some(n: int) -> list[int]:
            return [free_port() for _ in range(n)]

        return cls(some(NODES), some(NODES), some(NODES), some(INSTANCES), some(PARTITIONS),
                   some(INSTANCES))

    def all(self) -> list[int]:
        return [*self.nats, *self.routes, *self.monitors, *self.registry, *self.matcher,
                *self.notifier]


class Cluster:
    """The NATS nodes and the service processes; `env` adds to every service's settings
    (database URL and schemas, SMTP, the notifier's sealing key). With `passwords`
    (makelocal.nats_auth), NATS admits only its users and each service connects as its own."""

    def __init__(self, data_dir: Path, ports: ClusterPorts, env: dict[str, str],
                 passwords: Mapping[str, str] | None = None) -> None:
        self.data_dir, self.ports, self.passwords = data_dir, ports, passwords
        self.logs = data_dir / "logs"
        common = env | {  # what makes it this topology wins over `env`
            "MAKELOCAL_PARTITIONS": str(PARTITIONS),
            "MAKELOCAL_REGISTRY_STREAM_REPLICAS": str(NODES),
            "MAKELOCAL_MATCHER_STREAM_REPLICAS": str(NODES),
            "MAKELOCAL_NOTIFIER_STREAM_REPLICAS": str(NODES),
        }
        auth = nats_auth.server_config(passwords, **nats_auth.grant_settings(common)) \
            if passwords else None
        self.nodes = [
            NatsServer(data_dir / f"nats-{i}", ports.nats[i], ports.monitors[i],
                       log_file=self.logs / f"nats-{i}.log", cluster_port=ports.routes[i],
                       routes=[r for j, r in enumerate(ports.routes) if j != i], auth=auth)
            for i in range(NODES)]
        self.nats_url = ",".join(node.url for node in self.nodes)
        common["MAKELOCAL_NATS_URL"] = self.nats_url
        self.services: list[Service] = []
        for command, ports_of, extra in (
                ("registry", ports.registry, None),
                ("matcher", ports.matcher, "MAKELOCAL_MATCHER_PARTITION"),
                ("notifier", ports.notifier, None)):
            for i, port in enumerate(ports_of):
                own = port_env(command, port) | ({extra: str(i)} if extra else {}) \
                    | nats_auth.service_env(command, passwords or {})
                self.services.append(Service(f"{command}-{i}", command, port, common | own,
                                             self.logs / f"{command}-{i}.log"))

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def of(self, command: str) -> list[Service]:
        return [s for s in self.services if s.command == command]

    def start(self, timeout: float = 90) -> Cluster:
        self.logs.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_listening(timeout)
        wait_for_jetstream(self.nats_url, timeout, self.passwords)
        # in order: the registries make REGISTRY, the matchers MATCHES, the notifiers read it
        for command in ("registry", "matcher", "notifier"):
            for service in self.of(command):
                service.start()
            for service in self.of(command):
                service.wait_listening(timeout)
        return self

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        for node in self.nodes:
            node.stop()


def wait_for_jetstream(nats_url: str, timeout: float,
                       passwords: Mapping[str, str] | None = None) -> None:
    """Until the cluster has elected its JetStream meta leader and answers API requests
    (asked as the admin when NATS has users)."""
    import nats

    login = {"user": nats_auth.ADMIN, "password": passwords[nats_auth.ADMIN]} \
        if passwords else {}

    async def ready() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                nc = await nats.connect(servers=nats_url.split(","), connect_timeout=2,
                                        max_reconnect_attempts=1, **login)
                try:
                    await nc.jetstream().account_info()
                    return
                finally:
                    await nc.close()
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JetStream not ready at {nats_url}") from None
                await asyncio.sleep(0.25)

    asyncio.run(ready())
