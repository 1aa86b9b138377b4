"""The Prometheus configuration, alert rules and Grafana dashboard, checked by promtool
and against the metrics the services register."""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client import CollectorRegistry

from services.matcher.metrics import MatcherMetrics
from services.notifier.metrics import NotifierMetrics
from tests.support.monitoring import (
    DEPLOY,
    alert_expressions,
    dashboard_expressions,
    metric_names,
)

PROMTOOL = shutil.which("promtool")  # .ci/run installs Debian's prometheus package


def promtool(*args: str) -> str:
    assert PROMTOOL, "promtool is not installed: apt install prometheus (as .ci/run does)"
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60,
                          cwd=DEPLOY / "prometheus")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_configuration_and_rules_are_valid() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "9 rules found" in promtool("check", "rules", "alerts.yml")


def test_every_alert_fires_and_holds_off_as_its_unit_tests_say() -> None:
    out = promtool("test", "rules", "tests/alerts_test.yml")
    assert "SUCCESS" in out
    tested = (DEPLOY / "prometheus" / "tests" / "alerts_test.yml").read_text()
    for alert in alert_expressions():
        assert f"alertname: {alert}" in tested, f"{alert} has no unit test"


def test_the_operators_questions_each_have_an_alert_and_a_panel() -> None:
    alerts = alert_expressions()
    assert set(alerts) == {"MakelocalServiceDown", "MakelocalOutboxStale",
                           "MakelocalConsumerBehind", "MakelocalDeliveryFailureRatio",
                           "MakelocalDeadDeliveriesIncreasing", "MakelocalBatchesUnreadable",
                           "MakelocalSmtpRefusesUs", "MakelocalOutboxEventsParked",
                           "MakelocalMessagesParked"}
    panels = " ".join(e for exprs in dashboard_expressions().values() for e in exprs)
    for metric in ("up", "makelocal_matcher_consumer_pending",
                   "makelocal_notifier_consumer_pending",
                   "makelocal_registry_outbox_oldest_age_seconds",
                   "makelocal_notifier_oldest_pending_age_seconds",
                   "makelocal_notifier_deliveries_total", "makelocal_notifier_deliveries_dead"):
        assert metric in metric_names(panels), metric


def test_names_follow_prometheus_conventions() -> None:
    registry = CollectorRegistry()
    MatcherMetrics(registry), NotifierMetrics(registry)
    for family in registry.collect():
        assert family.name.startswith(("makelocal_matcher_", "makelocal_notifier_"))
        if family.type == "counter":
            assert family.name + "_total" in {s.name for s in family.samples}
        # base units: seconds and bytes, never milliseconds
        assert not family.name.endswith(("_ms", "_milliseconds")), family.name
