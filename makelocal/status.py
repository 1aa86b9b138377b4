"""`makelocal status`: each service's health, consumer lag, outbox backlog, parked events
and pending and dead deliveries, read from its /readyz and /metrics, as one table."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

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


def read_metrics(text: str) -> dict[str, float]:
    """Unlabelled samples by name (the gauges the table shows have no labels)."""
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def row(service: str, health: str, metrics: dict[str, float]) -> list[str]:
    """`service` is a kind (registry) or an instance of one (registry-1)."""
    kind = service.rsplit("-", 1)[0] if service[-1:].isdigit() else service
    cells = [service, health]
    for sources in COLUMNS.values():
        name = sources.get(kind)
        value = metrics.get(name) if name else None
        cells.append("-" if value is None else f"{value:g}")
    return cells


def render(rows: list[list[str]]) -> str:
    header = ["service", "health", *COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def probe(service: str, url: str, client: httpx.Client) -> list[str]:
    try:
        ready = client.get(f"{url}/readyz")
        health = "ready" if ready.status_code == 200 else f"not ready ({ready.status_code})"
        metrics = read_metrics(client.get(f"{url}/metrics").text)
    except httpx.HTTPError as exc:
        return row(service, f"down ({type(exc).__name__})", {})
    return row(service, health, metrics)


def status(urls: dict[str, str]) -> tuple[str, bool]:
    """The table, and whether every service is ready."""
    with httpx.Client(timeout=5) as client:
        rows = [probe(service, url, client) for service, url in urls.items()]
    return render(rows), all(r[1] == "ready" for r in rows)
