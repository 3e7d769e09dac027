"""The chart's alerts and dashboard: the PrometheusRule passes `promtool check rules` and its unit
tests (`promtool test rules`), and every metric the rules and the dashboard name is one the
sidecar's or the daemon's Prometheus registry exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.integration.chart.test_render import STRIPE
from tests.integration.chart.tools import CHART, by_kind, documents, one, render
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.sidecar.decisions.shadow import ShadowPolicy
from tiergate.sidecar.metrics import SidecarMetrics
from tiergate.sidecar.replica.damage import ReplicaDamage
from tiergate.sidecar.replica.follower import FollowerStatus
from tiergate.sidecar.usage.ledger import UsageLedger
from tiergate.sidecar.usage.outbox import Outbox
from tiergate.sync_daemon.metrics import DaemonMetrics
from tiergate.sync_daemon.sinks.runner import SinkMetrics

UNIT_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "tiergate.json"
# What a platform team is told the alerts cover, each by the metric its alert reads.
COVERED = {
    "replica age": "tiergate_replica_age_seconds",
    "usage backlog": "tiergate_usage_oldest_undelivered_seconds",
    "usage quarantine": "tiergate_usage_quarantined",
    "mirror drift": "tiergate_mirror_drift_total",
    "failed policy reloads": "tiergate_policy_reloads_total",
    "unnumbered feed rows": "tiergate_feed_unnumbered_stale",
    "sink lag": "tiergate_sink_lag_seconds",
    "outbound failures": "tiergate_outbound_webhook_attempts_total",
}
# Sample names prometheus_client exposes for each family type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}


# -- the names the code exports -------------------------------------------------------------


def exported_names(registry: CollectorRegistry) -> set[str]:
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]}


@pytest.fixture
def exported(tmp_path: Path) -> Iterator[set[str]]:
    """Every sample name the sidecar's and the daemon's registries expose, with every collector
    the processes register on them (follower, lag, damage, outbox, shadow; sinks)."""
    sidecar = SidecarMetrics(replica_age=lambda: 0.0)
    sidecar.watch_follower(FollowerStatus())
    sidecar.watch_lag(lambda: None, lambda: 0.0)
    sidecar.watch_damage(ReplicaDamage())
    outbox = Outbox(tmp_path / "outbox.db", UsageLedger(), time.time)
    sidecar.watch_outbox(outbox)
    ShadowPolicy(EmbeddedEngine(), sidecar.registry, sample=0.0, features=set)
    daemon = DaemonMetrics(feed_seq=lambda: 0.0)
    SinkMetrics(daemon.registry)
    yield exported_names(sidecar.registry) | exported_names(daemon.registry)


def test_the_registries_are_read_with_prometheus_clients_suffixes(exported: set[str]) -> None:
    assert {
        "tiergate_decisions_total",
        "tiergate_decision_seconds_bucket",
        "tiergate_replica_age_seconds",
    } <= exported
    assert {
        "tiergate_sink_lag_seconds",
        "tiergate_webhooks_total",
        "tiergate_shadow_evaluations_total",
    } <= exported
    assert "tiergate_decisions" not in exported and "tiergate_usage_backlog_total" not in exported


# -- the names an expression uses -----------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKENS = re.compile(r"\d[\w.]*|[A-Za-z_:][\w:]*(?:\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names in matchers or grouping clauses, numbers or durations."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers (and Grafana's ${var})
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries ($__rate_interval too)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables outside brackets
    names = set()
    for match in _TOKENS.finditer(text):
        token = match.group(0)
        if token[0].isdigit() or token.endswith("(") or token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (reason) (rate(tiergate_decisions_total{allow="false"}[5m])) > 0.5',
            {"tiergate_decisions_total"},
        ),
        ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x=~"$ns"}[$__rate_interval])))', {"a_bucket"}),
        ("a / on(pod) group_left(node) b offset 5m > bool 1e3", {"a", "b"}),
        ('label_replace(up, "dst", "$1", "src", "(.*)") unless absent(c)', {"up", "c"}),
        ("sum(x:recorded:rate5m) without (instance)", {"x:recorded:rate5m"}),
    ],
)
def test_metric_names_reads_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# -- the PrometheusRule ---------------------------------------------------------------------


def rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    merged = {**STRIPE, "prometheusRule": {"enabled": True, **(values or {})}}
    rule = one(documents(render(merged)), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "no promtool on PATH: `make test` installs Debian's prometheus package (apt-get install prometheus)"
        )
    return found


def run_promtool(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_rule_is_off_by_default() -> None:
    assert by_kind(documents(render(STRIPE)), "PrometheusRule") == []


def test_promtool_checks_the_rendered_rules(tmp_path: Path) -> None:
    values = {"thresholds": {"replicaAgeSeconds": 120}, "alertLabels": {"team": "billing"}}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(values)}), encoding="utf-8")
    output = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert re.search(rf"SUCCESS: {len(COVERED)} rules found", output), output


def test_promtool_unit_tests_fire_the_alerts(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}), encoding="utf-8")
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    run_promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A threshold the unit tests do not expect makes them fail: they test the rendered rule."""
    groups = rule_groups({"thresholds": {"replicaAgeSeconds": 5000}})
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    result = subprocess.run(
        [promtool(), "test", "rules", UNIT_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "TiergateReplicaStale" in result.stdout + result.stderr


def test_the_alerts_cover_what_they_promise_with_exported_metrics(exported: set[str]) -> None:
    rules = [rule for group in rule_groups() for rule in group["rules"]]
    used = {rule["alert"]: metric_names(rule["expr"]) for rule in rules}
    unknown = {alert: sorted(names - exported) for alert, names in used.items() if names - exported}
    assert unknown == {}, "alerts on metrics the code does not export"
    read = set().union(*used.values())
    assert {topic: metric for topic, metric in COVERED.items() if metric not in read} == {}


def test_extra_rules_are_appended() -> None:
    extra = {"alert": "MyAlert", "expr": "vector(1)", "labels": {"severity": "info"}}
    [group] = rule_groups({"extraRules": [extra]})
    assert group["rules"][-1] == extra


# -- the dashboard --------------------------------------------------------------------------


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query["query"])
            assert found, query
            exprs.append(found.group(1))
    return exprs


def test_the_dashboard_names_only_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 15
    used = {expr: metric_names(expr) for expr in exprs}
    assert all(used.values()), "an expression that selects no metric"
    unknown = {expr: sorted(names - exported) for expr, names in used.items() if names - exported}
    assert unknown == {}
    read = set().union(*used.values())
    for wanted in ("tiergate_decisions_total", "tiergate_decision_seconds_bucket", "tiergate_replica_age_seconds",
                   "tiergate_usage_backlog", "tiergate_sink_lag_seconds", "tiergate_webhooks_total"):  # fmt: skip
        assert wanted in read, wanted


def test_the_dashboard_ships_as_a_labelled_configmap() -> None:
    assert not [
        d for d in by_kind(documents(render(STRIPE)), "ConfigMap") if "dashboard" in d["metadata"]["name"]
    ]
    values = {**STRIPE, "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Billing"}}}
    [configmap] = [
        d for d in by_kind(documents(render(values)), "ConfigMap") if "dashboard" in d["metadata"]["name"]
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Billing"}
    assert configmap["metadata"]["namespace"] == "billing"
    shipped = json.loads(configmap["data"]["tiergate.json"])
    assert shipped == json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in shipped["panels"]]
    assert len(ids) == len(set(ids)) and shipped["uid"] == "tiergate"
