"""`makelocal status`: each service's health, consumer lag, outbox backlog, parked events
and pending and dead deliveries, read from its /readyz and /metrics: a table drawn with rich
for people, JSON for scripts."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

# column -> (service, metric) it is read from
COLUMNS = {
    "consumer lag": {"matcher": "makelocal_matcher_consumer_pending",
                     "notifier": "makelocal_notifier_consumer_pending"},
    "outbox backlog": {"registry": "makelocal_registry_outbox_backlog"},
    "oldest outbox event (s)": {"registry": "makelocal_registry_outbox_oldest_age_seconds"},
    # events the relay could never publish, kept in the registry's outbox_parked table
    "parked events": {"registry": "makelocal_registry_outbox_parked_rows"},
    "pending deliveries": {"notifier": "makelocal_notifier_deliveries_pending"},
    "dead deliveries": {"notifier": "makelocal_notifier_deliveries_dead"},
}
HEADER = ("service", "health", *COLUMNS)


@dataclass(frozen=True)
class ServiceStatus:
    """What one service instance answered."""

    service: str
    health: str
    metrics: dict[str, float]

    @property
    def ready(self) -> bool:
        return self.health == "ready"


def read_metrics(text: str) -> dict[str, float]:
    """Unlabelled samples by name (the gauges the table shows have no labels)."""
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def readings(service: str, metrics: dict[str, float]) -> list[float | None]:
    """Per column, the service's value; None where the column is not its metric.
    `service` is a kind (registry) or an instance of one (registry-1)."""
    kind = service.rsplit("-", 1)[0] if service[-1:].isdigit() else service
    return [metrics.get(sources[kind]) if kind in sources else None
            for sources in COLUMNS.values()]


def row(service: str, health: str, metrics: dict[str, float]) -> list[str]:
    """The table's cells for one service."""
    return [service, health, *("-" if value is None else number(value)
                               for value in readings(service, metrics))]


def number(value: float) -> str:
    """Whole numbers in full (a backlog of 1234567, not 1.23457e+06), ages to a tenth."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def table(found: list[ServiceStatus], stacked: bool = False) -> Table:
    """`stacked`: each heading a word a line, for a terminal narrower than the table."""
    headings = [h.replace(" ", "\n") if stacked else h for h in HEADER]
    drawn = Table(*headings, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True,
                  header_style="bold")
    # names stay whole; a cell that must still give way goes on over the next line, never
    # cut to an ellipsis
    for column in drawn.columns:
        column.overflow = "fold"
    drawn.columns[0].no_wrap = True
    for column in drawn.columns[2:]:
        column.justify = "right"
    for status in found:
        service, health, *cells = row(status.service, status.health, status.metrics)
        # Text, not markup: an exception's name in brackets must print as it is
        drawn.add_row(Text(service), Text(health, style="green" if status.ready else "red"),
                      *(Text(cell) for cell in cells))
    return drawn


def draw(found: list[ServiceStatus], console: Console | None = None) -> None:
    """The table on a terminal (headings stacked when it is narrower than the table);
    piped or redirected, as wide as it needs to be, so a script reading the lines finds
    every cell whole (rich would otherwise fit it into 80 columns or $COLUMNS)."""
    console = console or Console()
    drawn = table(found)
    if not console.is_terminal:
        console.width = max(console.width, _needed(console, drawn))
    elif _needed(console, drawn) > console.width:
        drawn = table(found, stacked=True)
        if _needed(console, drawn) > console.width:
            # Narrower still, rich would drop whole columns and cut names without a word
            _listed(found, console)
            return
    console.print(drawn)


def _needed(console: Console, drawn: Table) -> int:
    return Measurement.get(console, console.options.update(max_width=2**16), drawn).maximum


def _listed(found: list[ServiceStatus], console: Console) -> None:
    """Each service as a heading and one line per cell: every value there, folded over
    the next lines where even that line is too long."""
    for status in found:
        service, health, *cells = row(status.service, status.health, status.metrics)
        console.print(Text(service, style="bold"), overflow="fold")
        for heading, cell in zip(HEADER[1:], [health, *cells], strict=True):
            console.print(Text(f"  {heading}: {cell}"), overflow="fold")


def as_json(found: list[ServiceStatus]) -> str:
    """One object per service: its name, health, whether it is ready, and each column's
    value as reported (null where the column is not its metric)."""
    return json.dumps([{"service": s.service, "health": s.health, "ready": s.ready,
                        **dict(zip(COLUMNS, readings(s.service, s.metrics), strict=True))}
                       for s in found], indent=2)


def probe(service: str, url: str, client: httpx.Client) -> ServiceStatus:
    try:
        ready = client.get(f"{url}/readyz")
        health = "ready" if ready.status_code == 200 else f"not ready ({ready.status_code})"
        metrics = read_metrics(client.get(f"{url}/metrics").text)
    except httpx.HTTPError as exc:
        return ServiceStatus(service, f"down ({type(exc).__name__})", {})
    except ValueError:
        # Whatever answers on its port, one service's odd /metrics must not end the
        # command: the other rows still matter.
        return ServiceStatus(service, "metrics unreadable", {})
    return ServiceStatus(service, health, metrics)


def status(urls: dict[str, str]) -> list[ServiceStatus]:
    """Each service's answers, in the order given."""
    with httpx.Client(timeout=5) as client:
        return [probe(service, url, client) for service, url in urls.items()]
