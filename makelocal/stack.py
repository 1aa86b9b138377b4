"""`makelocal up`: NATS, PostgreSQL and the services on one machine, as child processes,
stopped together on Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from makelocal.embedded import (
    NatsServer,
    PortInUse,
    PostgresServer,
    port_is_free,
    stop_process,
    wait_for_port,
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
    smtp: int = 8025
    prometheus: int = 9090


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(os.environ.get("MAKELOCAL_DATA_DIR") or Path(base) / "makelocal")


def check_ports(ports: Ports) -> None:
    for port, option in ((ports.nats, "--nats-port"), (ports.nats_monitor, "--nats-monitor-port"),
                         (ports.postgres, "--postgres-port"),
                         (ports.registry, "--registry-port"),
                         (ports.matcher, "--matcher-port"),
                         (ports.notifier, "--notifier-port"), (ports.smtp, "--smtp-port")):
        if not port_is_free(port):
            raise PortInUse(port, option)


def service_env(nats_url: str, database_url: str, ports: Ports) -> dict[str, str]:
    return os.environ | {
        "MAKELOCAL_NATS_URL": nats_url, "MAKELOCAL_DATABASE_URL": database_url,
        "MAKELOCAL_REGISTRY_PORT": str(ports.registry),
        "MAKELOCAL_MATCHER_PORT": str(ports.matcher),
        "MAKELOCAL_NOTIFIER_PORT": str(ports.notifier),
        "MAKELOCAL_NOTIFIER_PUBLIC_URL": f"http://127.0.0.1:{ports.notifier}",
        # local receivers must work on one machine; production allows none by default
        "MAKELOCAL_NOTIFIER_ALLOW_CIDRS": "127.0.0.0/8,::1/128",
        "MAKELOCAL_SMTP_HOST": "127.0.0.1", "MAKELOCAL_SMTP_PORT": str(ports.smtp),
    }


def notifier_key(data_dir: Path) -> str:
    """The key sealing webhook secrets at rest, made on the first start and kept (owner
    read-only) in the data directory: losing it makes existing webhook secrets unusable."""
    from services.notifier.sealing import new_key

    path = data_dir / "notifier.key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(new_key())
    return path.read_text().strip()


def up(data_dir: Path, ports: Ports, say=print, with_prometheus: bool = False) -> int:
    """Run the stack until interrupted; returns the exit status."""
    check_ports(ports)
    if with_prometheus and not port_is_free(ports.prometheus):
        raise PortInUse(ports.prometheus, "--prometheus-port")
    data_dir.mkdir(parents=True, exist_ok=True)
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    nats = NatsServer(data_dir / "nats", ports.nats, ports.nats_monitor,
                      log_file=data_dir / "nats.log")
    postgres = PostgresServer(data_dir / "postgres", ports.postgres)
    services: list[tuple[str, subprocess.Popen]] = []
    try:
        nats.start()
        say(f"NATS JetStream  {nats.url}  (monitoring http://127.0.0.1:{ports.nats_monitor})")
        postgres.start()
        say(f"PostgreSQL      {postgres.url}")
        env = service_env(nats.url, postgres.url, ports)
        env.setdefault("MAKELOCAL_NOTIFIER_SECRET_KEY", notifier_key(data_dir))
        logs = data_dir / "logs"
        logs.mkdir(exist_ok=True)
        mail = data_dir / "mail"
        for name, port, args in (
                ("mail-sink", ports.smtp, ["--dir", str(mail), "--port", str(ports.smtp)]),
                ("registry", ports.registry, []), ("matcher", ports.matcher, []),
                ("notifier", ports.notifier, [])):
            proc = subprocess.Popen([sys.executable, "-m", "makelocal.cli", name, *args],
                                    env=env, stdout=open(logs / f"{name}.log", "ab"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
            services.append((name, proc))
            wait_for_port(port, 60, proc)
            if name == "mail-sink":
                say(f"SMTP sink       127.0.0.1:{port}  (every email kept as .eml in {mail})")
            else:
                say(f"{name:<15} http://127.0.0.1:{port}  (API docs /docs, metrics /metrics)")
        if with_prometheus:
            started = _start_prometheus(data_dir, ports, logs, say)
            if started is not None:
                services.append(("prometheus", started))
        (data_dir / STATE_FILE).write_text(json.dumps({
            "nats_url": nats.url, "database_url": postgres.url,
            "registry_url": f"http://127.0.0.1:{ports.registry}",
            "matcher_url": f"http://127.0.0.1:{ports.matcher}",
            "notifier_url": f"http://127.0.0.1:{ports.notifier}", "mail_dir": str(mail),
            "pid": os.getpid(),
        }))
        say(f"data            {data_dir}  (logs in {logs})")
        say("ready; Ctrl-C stops everything")
        while not stopping:
            for name, proc in services:
                if proc.poll() is not None:
                    say(f"{name} exited with status {proc.returncode}; stopping")
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        for _, proc in reversed(services):
            stop_process(proc)
        postgres.stop()
        nats.stop()
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        say("stopped")


def _start_prometheus(data_dir: Path, ports: Ports, logs: Path, say) -> subprocess.Popen | None:
    from makelocal import prometheus

    executable = prometheus.binary()
    if executable is None:
        say("prometheus      not found on PATH (Debian: apt install prometheus); not started")
        return None
    config = prometheus.write_config(data_dir / "prometheus.yml", {
        f"makelocal-{name}": [f"127.0.0.1:{getattr(ports, name)}"]
        for name in ("registry", "matcher", "notifier")})
    proc = prometheus.start(executable, data_dir / "prometheus", ports.prometheus, config,
                            logs / "prometheus.log")
    wait_for_port(ports.prometheus, 60, proc)
    say(f"prometheus      http://127.0.0.1:{ports.prometheus}  (rules from {prometheus.DEPLOY})")
    return proc


def running_stack(data_dir: Path) -> dict[str, str]:
    """URLs of the stack `up` started with this data directory, or of the environment."""
    state: dict[str, str] = {}
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
