"""deploy/grafana-dashboard.json and deploy/prometheus-rules.yml name only metrics Ozzy exports, and
docs/operations.md documents every one of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from shared.observability import metrics

ROOT = Path(__file__).resolve().parents[2]
HISTOGRAMS = {"ozzy_handler_duration_seconds", "ozzy_relay_batch_seconds", "ozzy_http_request_duration_seconds"}


def exported_series() -> set[str]:
    """Every series name a scrape can return: the families, and each histogram's parts."""
    names = set(metrics.METRIC_NAMES)
    for name in HISTOGRAMS:
        names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def named_in(expression: str) -> set[str]:
    return set(re.findall(r"\bozzy_[a-z0-9_]+", expression))


def expressions(node: object) -> list[str]:
    """Every ``expr`` anywhere in a parsed JSON or YAML document."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(expressions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(expressions(item))
    return found


def test_every_metric_the_grafana_dashboard_names_exists() -> None:
    board = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = expressions(board["panels"])
    assert len(exprs) >= 15
    named = set().union(*(named_in(e) for e in exprs))
    assert named and named <= exported_series(), named - exported_series()
    # and it shows every metric family at least once
    families = {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for n in named}
    assert set(metrics.METRIC_NAMES) <= families, set(metrics.METRIC_NAMES) - families
    # and no metric from outside Ozzy (every word ending like a metric is one of Ozzy's)
    assert all(not re.search(r"\b(?!ozzy_)[a-z]+_[a-z_]*(total|seconds|bucket)\b", e) for e in exprs)


def test_every_metric_the_alerting_rules_name_exists_and_each_named_alert_is_there() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        assert named_in(rule["expr"]) <= exported_series(), (rule["alert"], named_in(rule["expr"]))
    alerts = {rule["alert"] for rule in rules}
    # what the issue asks to alert on: backlog age, dead letters growing, fast channel down, a node gone, handler p95
    assert {"OzzyBacklogOld", "OzzyDeadLettersGrowing", "OzzyFastChannelDown", "OzzyNodeGone", "OzzyHandlerSlow"} <= alerts


def test_the_operations_guide_documents_every_metric_and_probe() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    for name in metrics.METRIC_NAMES:
        assert f"`{name}`" in guide, name
    for word in ("/healthz", "/readyz", "OZZY_METRICS_PORT", "OZZY_METRICS_HOST", "OZZY_LOG_FORMAT=json", "ozzy status"):
        assert word in guide, word
    assert named_in(guide) <= exported_series(), named_in(guide) - exported_series()
