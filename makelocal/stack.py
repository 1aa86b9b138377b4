"""`makelocal up`: NATS, PostgreSQL and the services on one machine, as child processes,
stopped together on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from makelocal import nats_auth
from makelocal.cluster import SERVICE_KINDS, Cluster, ClusterPorts, Service
from makelocal.embedded import (
    NatsServer,
    PortInUse,
    PostgresServer,
    port_is_free,
)

STATE_FILE = "stack.json"


@dataclass
class Ports:
    nats: int = 4222
    nats_monitor: int = 8222
    postgres: int = 5544
    registry: int = 8001
    matcher: int = 8002
    notifier: int = 8003
    web: int = 8000
    smtp: int = 8025
    prometheus: int = 9090
    nats_routes: int = 6222  # --cluster only: the first node's cluster port


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(os.environ.get("MAKELOCAL_DATA_DIR") or Path(base) / "makelocal")


def check_ports(ports: Ports) -> None:
    for port, option in ((ports.nats, "--nats-port"), (ports.nats_monitor, "--nats-monitor-port"),
                         (ports.postgres, "--postgres-port"),
                         (ports.registry, "--registry-port"),
                         (ports.matcher, "--matcher-port"),
                         (ports.notifier, "--notifier-port"), (ports.web, "--web-port"),
                         (ports.smtp, "--smtp-port")):
        if not port_is_free(port):
            raise PortInUse(port, option)


def service_env(database_url: str, ports: Ports) -> dict[str, str]:
    """Every service's settings but the NATS URL, which the topology gives."""
    return os.environ | {
        "MAKELOCAL_DATABASE_URL": database_url,
        "MAKELOCAL_REGISTRY_PORT": str(ports.registry),
        "MAKELOCAL_MATCHER_PORT": str(ports.matcher),
        "MAKELOCAL_NOTIFIER_PORT": str(ports.notifier),
        # the links in alert emails open the web page's own pages for them
        "MAKELOCAL_NOTIFIER_PUBLIC_URL": f"http://127.0.0.1:{ports.web}",
        "MAKELOCAL_NOTIFIER_PAGES_URL": f"http://127.0.0.1:{ports.web}",
        "MAKELOCAL_WEB_PORT": str(ports.web),
        # local receivers must work on one machine; production allows none by default
        "MAKELOCAL_NOTIFIER_ALLOW_CIDRS": "127.0.0.0/8,::1/128",
        "MAKELOCAL_SMTP_HOST": "127.0.0.1", "MAKELOCAL_SMTP_PORT": str(ports.smtp),
    }


NOTIFIER_KEY_FILE = "notifier.key"
# keys that sealed before `makelocal notifier rotate-key`: they still open, never seal
NOTIFIER_OLD_KEYS_FILE = "notifier.old-keys"
# the next key while a rotation is under way: kept before any secret is sealed under it, so
# a rotation cut short loses nothing (running it again finishes it)
NOTIFIER_NEXT_KEY_FILE = "notifier.key.next"


def notifier_key(data_dir: Path) -> str:
    """The key sealing webhook secrets at rest, made on the first start and kept (owner
    read-only) in the data directory: losing it makes existing webhook secrets unusable."""
    from services.notifier.sealing import new_key

    path = data_dir / NOTIFIER_KEY_FILE
    if not path.exists():
        write_secret_file(path, new_key())
    return path.read_text().strip()


def notifier_old_keys(data_dir: Path) -> list[str]:
    """Keys that may still open secrets sealed before a rotation (each once): the ones
    `rotate-key` kept, and the next key of a rotation cut short, if any."""
    keys: list[str] = []
    for name in (NOTIFIER_OLD_KEYS_FILE, NOTIFIER_NEXT_KEY_FILE):
        path = data_dir / name
        if path.exists():
            keys += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(keys))


def notifier_key_env(data_dir: Path) -> dict[str, str]:
    """The notifier's keys from the data directory, as `up` hands them to the service."""
    env = {"MAKELOCAL_NOTIFIER_SECRET_KEY": notifier_key(data_dir)}
    if old := notifier_old_keys(data_dir):
        env["MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS"] = ",".join(old)
    return env


def write_secret_file(path: Path, text: str) -> None:
    """Replace the file at once (a crash leaves the old or the new, whole), owner-only."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


WEB_KEY_FILE = "web.key"


def web_key(data_dir: Path, database_url: str) -> str:
    """The key the web page creates makers' email alerts with: an organization of its own,
    made on the first start and kept (owner read-only) in the data directory."""
    path = data_dir / WEB_KEY_FILE
    if not path.exists():
        _, key = asyncio.run(create_organization(database_url, "makelocal web page"))
        path.touch(mode=0o600)
        path.write_text(key)
    return path.read_text().strip()


async def create_organization(database_url: str, name: str) -> tuple[str, str]:
    """A new organization and its API key (the registry's schema made first if need be)."""
    from makelocal.admin import registry_store

    async with registry_store(database_url) as store:
        return await store.create_organization(name)


def up(data_dir: Path, ports: Ports, say=print, with_prometheus: bool = False,
       cluster: bool = False) -> int:
    """Run the stack until interrupted; returns the exit status. With `cluster`, the
    production topology (makelocal.cluster): three NATS nodes, two of each service."""
    cluster_ports = ClusterPorts.from_base(ports.nats, ports.nats_routes, ports.nats_monitor,
                                           ports.registry, ports.matcher,
                                           ports.notifier) if cluster else None
    check_ports(ports)
    for port in cluster_ports.all() if cluster_ports else []:
        if not port_is_free(port):
            raise PortInUse(port, "--nats-port and the service ports (--cluster takes the "
                                  "next ports too)")
    if with_prometheus and not port_is_free(ports.prometheus):
        raise PortInUse(ports.prometheus, "--prometheus-port")
    data_dir.mkdir(parents=True, exist_ok=True)
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    mail = data_dir / "mail"
    postgres = PostgresServer(data_dir / "postgres", ports.postgres)
    nodes: list[NatsServer] = []
    services: list[Service] = []
    try:
        postgres.start()
        say(f"PostgreSQL      {postgres.url}")
        env = service_env(postgres.url, ports)
        if "MAKELOCAL_NOTIFIER_SECRET_KEY" not in env:  # else the environment's keys
            env |= notifier_key_env(data_dir)
        # NATS admits only the services' users, each allowed what it needs alone
        passwords = nats_auth.generated(data_dir)
        sink = Service("mail-sink", "mail-sink", ports.smtp, env, logs / "mail-sink.log",
                       ["--dir", str(mail), "--port", str(ports.smtp)]).start()
        services.append(sink)
        sink.wait_listening()
        say(f"SMTP sink       127.0.0.1:{ports.smtp}  (every email kept as .eml in {mail})")
        if cluster_ports is not None:
            topology = Cluster(data_dir, cluster_ports, env, passwords)
            nodes, services = topology.nodes, [sink, *topology.services]
            topology.start()
            nats_url = topology.nats_url
            say(f"NATS JetStream  {nats_url}  (3 nodes clustered, streams replicated 3 times)")
        else:
            nats = NatsServer(data_dir / "nats", ports.nats, ports.nats_monitor,
                              log_file=data_dir / "nats.log",
                              auth=nats_auth.server_config(passwords,
                                                           **nats_auth.grant_settings(env)))
            nodes = [nats.start()]
            nats_url = nats.url
            say(f"NATS JetStream  {nats.url}  (monitoring http://127.0.0.1:{ports.nats_monitor})")
            for name in SERVICE_KINDS:
                service = Service(name, name, getattr(ports, name),
                                  env | {"MAKELOCAL_NATS_URL": nats.url}
                                  | nats_auth.service_env(name, passwords), logs / f"{name}.log")
                services.append(service.start())
                service.wait_listening()
        first = {s.command: s.url for s in reversed(services)}
        web = Service("web", "web", ports.web, env | {
            "MAKELOCAL_REGISTRY_URL": first["registry"], "MAKELOCAL_NOTIFIER_URL":
            first["notifier"],
            # every partition's matcher: each holds only its partition's designs
            "MAKELOCAL_MATCHER_URL": ",".join(s.url for s in services
                                              if s.command == "matcher"),
            "MAKELOCAL_WEB_API_KEY": web_key(data_dir, postgres.url)}, logs / "web.log")
        services.append(web.start())
        web.wait_listening()
        say(f"{'web page':<15} {web.url}  (open it in a browser: find designs, who near you"
            " can make them, alerts)")
        for service in services[1:-1]:
            say(f"{service.name:<15} {service.url}  (API docs /docs, metrics /metrics)")
        if with_prometheus:
            started = _start_prometheus(data_dir, ports, services[1:], logs, say)
            if started is not None:
                services.append(started)
        (data_dir / STATE_FILE).write_text(json.dumps({
            "nats_url": nats_url, "database_url": postgres.url,
            "registry_url": first["registry"], "matcher_url": first["matcher"],
            "notifier_url": first["notifier"], "web_url": web.url, "mail_dir": str(mail),
            "pid": os.getpid(),
            # every instance, for `makelocal status` (a cluster runs two of each)
            "services": {s.name: s.url for s in services if s.command in SERVICE_KINDS},
        }))
        say(f"data            {data_dir}  (logs in {logs}; NATS users' passwords in "
            f"{nats_auth.CREDENTIALS_FILE})")
        say("ready; Ctrl-C stops everything")
        while not stopping:
            for service in services:
                if service.exited() is not None:
                    say(f"{service.name} exited with status {service.exited()}; stopping")
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        for service in reversed(services):
            service.stop()
        for node in nodes:
            node.stop()
        postgres.stop()
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        say("stopped")


def _start_prometheus(data_dir: Path, ports: Ports, services: list[Service], logs: Path,
                      say) -> Service | None:
    from makelocal import prometheus

    executable = prometheus.binary()
    if executable is None:
        say("prometheus      not found on PATH (Debian: apt install prometheus); not started")
        return None
    jobs: dict[str, list[str]] = {}
    for service in services:
        jobs.setdefault(f"makelocal-{service.command}", []).append(f"127.0.0.1:{service.port}")
    config = prometheus.write_config(data_dir / "prometheus.yml", jobs)
    started = prometheus.service(executable, data_dir / "prometheus", ports.prometheus, config,
                                 logs / "prometheus.log").start()
    started.wait_listening()
    say(f"prometheus      http://127.0.0.1:{ports.prometheus}  (rules from {prometheus.DEPLOY})")
    return started


def running_stack(data_dir: Path) -> dict[str, Any]:
    """URLs of the stack `up` started with this data directory, or of the environment."""
    state: dict[str, Any] = {}
    path = data_dir / STATE_FILE
    if path.exists():
        state = json.loads(path.read_text())
    env = {"database_url": "MAKELOCAL_DATABASE_URL", "registry_url": "MAKELOCAL_REGISTRY_URL",
           "matcher_url": "MAKELOCAL_MATCHER_URL", "notifier_url": "MAKELOCAL_NOTIFIER_URL",
           "nats_url": "MAKELOCAL_NATS_URL"}
    for key, var in env.items():
        if os.environ.get(var):
            state[key] = os.environ[var]
    return state
