"""deploy/monitoring: alert rules and the dashboard use only the documented metrics, parse as
PromQL, fire when they should (promtool, when installed) and each has a runbook section."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import promql_parser
import pytest

from tests.deploy.support import (
    K8S,
    METRICS,
    MONITORING,
    REPO,
    allowed_series_names,
    load_yaml,
)

ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
OPERATIONS = REPO / "docs" / "operations.md"
JOBS = {"pagelane-api", "pagelane-worker"}
RANGE_FUNCTIONS = {"rate", "increase", "irate"}


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def selectors(expr: str) -> list[tuple[str, dict[str, str], list[str]]]:
    """(series name, equality matchers, enclosing node kinds) of every selector in a query."""
    tree = promql_parser.parse(expr)
    found: list[tuple[str, dict[str, str], list[str]]] = []
    stack: list[str] = []

    def kind(node: Any) -> str:
        if isinstance(node, promql_parser.Call):
            return f"call:{node.func.name}"
        return type(node).__name__

    def pre(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {m.name: m.value for m in node.matchers.matchers}
            name = node.name or matchers.get("__name__", "")
            found.append((name, matchers, list(stack)))
        stack.append(kind(node))

    def post(node: Any) -> None:
        stack.pop()

    promql_parser.walk(tree, pre, post)
    return found


def check_query(expr: str, where: str) -> set[str]:
    """Assert a query uses only known series, counters only through rate/increase."""
    used = set()
    allowed = allowed_series_names()
    for name, matchers, parents in selectors(expr):
        assert name in allowed, f"{where}: unknown series {name!r}"
        used.add(name)
        if name == "up":
            assert matchers.get("job") in JOBS, f"{where}: up{{job=...}} must name a Pagelane job"
        if name.endswith(("_total", "_bucket", "_sum", "_count")):
            assert parents[-2:-1] and parents[-2] in {f"call:{f}" for f in RANGE_FUNCTIONS}, (
                f"{where}: counter {name} used without rate()/increase()"
            )
    return used


def anchors(markdown: str) -> set[str]:
    """GitHub-style heading anchors of a markdown document."""
    result = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        result.add(slug)
    return result


# --- alert rules --------------------------------------------------------------------------------


def test_rule_file_structure() -> None:
    document = load_yaml(ALERTS)
    groups = document["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"Pagelane[A-Z][A-Za-z]+", rule["alert"])
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"]


def test_expressions_parse_and_use_only_documented_metrics() -> None:
    used: set[str] = set()
    for rule in rules():
        used |= check_query(rule["expr"], rule["alert"])
    # The five asked-for families are covered.
    wanted = {
        "up",  # worker down
        "pagelane_oldest_pending_item_age_seconds",  # oldest pending item age
        "pagelane_items_finished_total",  # failure ratio
        "pagelane_customer_running_items",  # customers saturated at their cap
        "pagelane_customer_concurrency_cap",
        "pagelane_sweep_last_success_timestamp_seconds",  # sweeps not running
        "pagelane_sweep_runs_total",
    }
    assert wanted <= used, wanted - used


def test_the_checker_rejects_unknown_metrics_and_raw_counters() -> None:
    with pytest.raises(AssertionError, match="unknown series"):
        check_query("pagelane_items_total > 0", "t")
    with pytest.raises(AssertionError, match="without rate"):
        check_query("sum(pagelane_items_finished_total) > 0", "t")
    with pytest.raises(AssertionError, match="Pagelane job"):
        check_query('up{job="celery"} == 0', "t")
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(pagelane_pages_total[5m])")


def test_every_alert_has_a_runbook_section() -> None:
    text = OPERATIONS.read_text()
    available = anchors(text)
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md"
        assert anchor == rule["alert"].lower(), url
        assert anchor in available, f"docs/operations.md has no section for {rule['alert']}"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return path


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    # alerts.test.yaml: each alert fires on a history that should fire it, not on a healthy one.
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=MONITORING,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    tests = load_yaml(MONITORING / "alerts.test.yaml")
    assert tests["rule_files"] == ["alerts.yaml"]
    firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert firing == {rule["alert"] for rule in rules()}


# --- scrape configuration -----------------------------------------------------------------------


def test_scrape_jobs_match_the_rules_and_the_pods() -> None:
    config = load_yaml(MONITORING / "prometheus.yml")
    assert {job["job_name"] for job in config["scrape_configs"]} == JOBS
    assert config["rule_files"] == ["alerts.yaml"]
    for role in ("api", "worker"):
        deployment = load_yaml(K8S / "base" / f"{role}-deployment.yaml")
        template = deployment["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        ports = {p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) in ports
        assert annotations["prometheus.io/path"] == "/metrics"
        # /metrics carries customer ids: never on the port the Service and Ingress route.
        public = {
            p["containerPort"]
            for p in template["spec"]["containers"][0]["ports"]
            if p["name"] == "http"
        }
        assert int(annotations["prometheus.io/port"]) not in public
    config_map = load_yaml(K8S / "base" / "configmap.yaml")
    # Scraped from outside the pod: the metrics ports listen beyond loopback.
    assert config_map["data"]["PAGELANE_METRICS_BIND"] == "0.0.0.0"
    assert config_map["data"]["PAGELANE_API_METRICS_PORT"] == "9807"


# --- dashboard ----------------------------------------------------------------------------------

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$customer": ".*"}


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    return queries


def test_dashboard_is_valid_and_covers_every_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "customer"} <= set(variables)
    match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variables["customer"]["definition"])
    assert match and match.group(1) in allowed_series_names() and match.group(2) == "customer_id"
    used: set[str] = set()
    for title, expr in dashboard_queries(dashboard):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{title}: unknown variable in {expr}"
        used |= check_query(expr, title)
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used} - {"up"}
    assert families == set(METRICS), set(METRICS) - families
