"""`makelocal status`: a table drawn with rich that keeps every cell whole when piped, JSON
for scripts, exit status 1 unless every service is ready; against services that are down
and against real HTTP servers answering /readyz and /metrics."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from makelocal.embedded import free_port
from makelocal.status import COLUMNS, HEADER, ServiceStatus, draw, read_metrics, row, status

METRICS = {
    "registry": "makelocal_registry_outbox_backlog 1234567.0\n"
                "makelocal_registry_outbox_oldest_age_seconds 12.25\n"
                "makelocal_registry_outbox_parked_rows 0.0\n",
    "matcher": "makelocal_matcher_consumer_pending 3.0\n",
    "notifier": "makelocal_notifier_consumer_pending 0.0\n"
                "makelocal_notifier_deliveries_pending 12.0\n"
                "makelocal_notifier_deliveries_dead 2.0\n",
}


def serve(ready: bool, metrics: str) -> ThreadingHTTPServer:
    """A service's /readyz (200 or 503) and /metrics, on a port of its own."""

    class Service(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = 200 if self.path == "/metrics" or ready else 503
            body = metrics.encode() if self.path == "/metrics" else b"{}"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def services() -> Iterator[dict[str, str]]:
    """The registry and the notifier ready, the matcher not (503)."""
    servers = {kind: serve(kind != "matcher", text) for kind, text in METRICS.items()}
    yield {kind: f"http://127.0.0.1:{s.server_address[1]}" for kind, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


def makelocal_status(urls: dict[str, str], tmp_path: Path, *options: str
                     ) -> subprocess.CompletedProcess[str]:
    """`makelocal status` as a script runs it: stdout a pipe, $COLUMNS narrow."""
    env = os.environ | {"COLUMNS": "40"} | {
        f"MAKELOCAL_{kind.upper()}_URL": url for kind, url in urls.items()}
    return subprocess.run([sys.executable, "-m", "makelocal.cli", "status", "--data-dir",
                           str(tmp_path), *options], capture_output=True, text=True,
                          env=env, timeout=60)


def test_a_service_that_does_not_answer_is_shown_down() -> None:
    (found,) = status({"registry": f"http://127.0.0.1:{free_port()}"})
    assert not found.ready
    assert found.health == "down (ConnectError)"


def test_rows_show_only_the_metrics_of_their_service() -> None:
    metrics = read_metrics("# TYPE makelocal_notifier_deliveries_dead gauge\n"
                           "makelocal_notifier_deliveries_dead 3.0\n"
                           "makelocal_notifier_deliveries_pending 12.0\n"
                           "makelocal_notifier_consumer_pending 0.0\n")
    assert row("notifier", "ready", metrics) == ["notifier", "ready", "0", "-", "-", "-", "12",
                                                 "3"]
    assert row("registry-1", "ready", {"makelocal_registry_outbox_backlog": 1234567.0,
                                       "makelocal_registry_outbox_oldest_age_seconds": 0.25}
               )[2:5] == ["-", "1234567", "0.2"]  # in full, not 1.23457e+06


def test_piped_the_table_keeps_every_cell_whole_however_narrow_columns_says(
        services: dict[str, str], tmp_path: Path) -> None:
    done = makelocal_status(services, tmp_path)
    assert done.returncode == 1, done.stderr  # the matcher is not ready
    assert "\x1b[" not in done.stdout  # no terminal, no colours
    header, rule, *lines = done.stdout.splitlines()
    assert all(heading in header for heading in HEADER)
    assert set(rule.strip()) == {"─"}
    assert [line.split() for line in lines] == [
        ["registry", "ready", "-", "1234567", "12.2", "0", "-", "-"],
        ["matcher", "not", "ready", "(503)", "3", "-", "-", "-", "-", "-"],
        ["notifier", "ready", "0", "-", "-", "-", "12", "2"]]


def test_json_gives_scripts_every_value_as_reported(
        services: dict[str, str], tmp_path: Path) -> None:
    done = makelocal_status(services, tmp_path, "--json")
    assert done.returncode == 1, done.stderr
    found = {s["service"]: s for s in json.loads(done.stdout)}
    assert found["registry"] == {
        "service": "registry", "health": "ready", "ready": True, "consumer lag": None,
        "outbox backlog": 1234567.0, "oldest outbox event (s)": 12.25, "parked events": 0.0,
        "pending deliveries": None, "dead deliveries": None}
    assert found["matcher"]["health"] == "not ready (503)" and not found["matcher"]["ready"]
    assert found["notifier"]["dead deliveries"] == 2.0
    assert set(found["notifier"]) == {"service", "health", "ready", *COLUMNS}


def test_every_service_ready_exits_0(services: dict[str, str], tmp_path: Path) -> None:
    ready = {kind: url for kind, url in services.items() if kind != "matcher"}
    assert makelocal_status(ready | {"matcher": ready["registry"]}, tmp_path).returncode == 0


def test_a_narrow_terminal_stacks_the_headings_and_cuts_no_value() -> None:
    out = io.StringIO()
    found = [ServiceStatus("registry-1", "ready", {"makelocal_registry_outbox_backlog": 1e6}),
             ServiceStatus("notifier-2", "ready", {"makelocal_notifier_deliveries_dead": 7.0})]
    draw(found, Console(file=out, force_terminal=True, width=80, color_system=None))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "deliveries" in lines[-4] and "consumer lag" not in out.getvalue()  # stacked
    assert lines[-2].split() == ["registry-1", "ready", "-", "1000000", "-", "-", "-", "-"]
    assert lines[-1].split() == ["notifier-2", "ready", "-", "-", "-", "-", "-", "7"]
