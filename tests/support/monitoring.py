"""What the monitoring files ask of the services: the metric names their expressions use."""

from __future__ import annotations

import json
import re

import yaml

from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"
# a metric name in PromQL: not a label name (followed by = or ~), not a function (followed
# by an opening parenthesis)
_NAME = re.compile(r"\b(makelocal_[a-z0-9_]+|up)\b(?!\s*[=!~(])")


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_expressions() -> dict[str, list[str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "makelocal.json").read_text())
    return {panel["title"]: [t["expr"] for t in panel["targets"]]
            for panel in dashboard["panels"]}


def metric_names(expression: str) -> set[str]:
    return set(_NAME.findall(expression))


def every_named_metric() -> set[str]:
    names = set()
    for expr in alert_expressions().values():
        names |= metric_names(expr)
    for exprs in dashboard_expressions().values():
        for expr in exprs:
            names |= metric_names(expr)
    return names
