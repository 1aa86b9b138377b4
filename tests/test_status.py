"""`makelocal status` against services that are down: said in the table, exit status 1."""

from __future__ import annotations

from makelocal.embedded import free_port
from makelocal.status import read_metrics, render, row, status


def test_a_service_that_does_not_answer_is_shown_down() -> None:
    table, healthy = status({"registry": f"http://127.0.0.1:{free_port()}"})
    assert not healthy
    assert table.splitlines()[1].split()[:2] == ["registry", "down"]


def test_rows_show_only_the_metrics_of_their_service() -> None:
    metrics = read_metrics("# TYPE makelocal_notifier_deliveries_dead gauge\n"
                           "makelocal_notifier_deliveries_dead 3.0\n"
                           "makelocal_notifier_deliveries_pending 12.0\n"
                           "makelocal_notifier_consumer_pending 0.0\n")
    lines = render([row("notifier", "ready", metrics)]).splitlines()
    assert lines[1].split() == ["notifier", "ready", "0", "-", "-", "-", "12", "3"]
