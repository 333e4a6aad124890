"""Lint the shipped Grafana dashboards: structure, layout, units, datasource and PromQL.

Every panel expression is parsed by the real Prometheus parser (``promtool check rules``
on a generated rules file), so a typo in a query fails here, not in front of a user.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GRAFANA_DIR = ROOT / "dashboards" / "grafana"
OVERVIEW = GRAFANA_DIR / "omniq-overview.json"
QUEUE = GRAFANA_DIR / "omniq-queue.json"
DASHBOARDS = [OVERVIEW, QUEUE]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The Prometheus metrics of the contract (README "Prometheus metrics").
CONTRACT_METRICS = frozenset(
    {
        "omniq_task_events_total",
        "omniq_task_duration_seconds",
        "omniq_task_queue_wait_seconds",
        "omniq_tasks_in_progress",
        "omniq_tasks_waiting",
        "omniq_task_failures_total",
        "omniq_task_retries_total",
        "omniq_observe_events_processed_total",
        "omniq_observe_handler_errors_total",
        "omniq_observe_processor_lag_seconds",
        "omniq_observe_unpaired_events_total",
        "omniq_observe_undecodable_events_total",
        "omniq_observe_label_overflow_total",
    }
)
HISTOGRAMS = frozenset({"omniq_task_duration_seconds", "omniq_task_queue_wait_seconds"})

# Grafana unit ids: seconds, ops/s, ratio shown as percent, plain counts.
UNITS = frozenset({"s", "ops", "percentunit", "short"})

# What Grafana substitutes for its built-in variables, as Prometheus durations.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
METRIC = re.compile(r"(?<![\w:])omniq_\w+(?![\w:])")


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def data_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in panels(dashboard) if p["type"] != "row")


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target."""
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            yield f"panel {panel['id']} {panel['title']!r} target {target['refId']}", target["expr"]


def variable_selectors(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(name, selector, label) of every label_values() query variable."""
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
        assert match, f"variable {var['name']}: {var['definition']!r} is not label_values(s, label)"
        yield var["name"], match.group(1), match.group(2)


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana variables the way Grafana would before sending the query."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        assert name in variables, f"undefined variable ${name} in {expr!r}"
        return variables[name]

    return VARIABLE.sub(repl, expr)


def defined_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every dashboard variable, set to the regex an "All" selection sends."""
    return {var["name"]: ".*" for var in dashboard["templating"]["list"]}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is required in CI: apt-get install prometheus")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


def check_promql(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `promtool check rules` on a rules file with one recording rule per expression."""
    records = [{"record": f"dashboard:expr:{n}", "expr": e} for n, e in enumerate(exprs)]
    rules = {"groups": [{"name": "dashboard_expressions", "rules": records}]}
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    path: Path = request.param
    return load(path)


def test_dashboard_metadata(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["title"].startswith("OmniQ ")
    assert "omniq" in dashboard["tags"]
    assert dashboard["id"] is None  # importable into any Grafana: the server assigns the id


def test_dashboard_uids_and_titles_are_distinct() -> None:
    loaded = [load(p) for p in DASHBOARDS]
    assert len({d["uid"] for d in loaded}) == len(loaded)
    assert len({d["title"] for d in loaded}) == len(loaded)


def test_datasource_is_a_prometheus_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for name in ("job", "instance", "queue"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == DATASOURCE
        assert var["definition"] == var["query"]["query"]
    assert list(variables) == ["datasource", "job", "instance", "queue"]


def test_overview_variables_are_multi_select_with_all() -> None:
    variables = {v["name"]: v for v in load(OVERVIEW)["templating"]["list"]}
    for name in ("job", "instance", "queue"):
        assert variables[name]["multi"] is True
        assert variables[name]["includeAll"] is True
        assert variables[name]["allValue"] == ".*"


def test_queue_dashboard_shows_exactly_one_queue() -> None:
    variables = {v["name"]: v for v in load(QUEUE)["templating"]["list"]}
    assert variables["queue"]["multi"] is False
    assert variables["queue"]["includeAll"] is False
    for name in ("job", "instance"):
        assert variables[name]["multi"] is True
        assert variables[name]["includeAll"] is True


def test_variables_read_omniq_metrics(dashboard: dict[str, Any]) -> None:
    found = {name: (selector, label) for name, selector, label in variable_selectors(dashboard)}
    assert {name: label for name, (_, label) in found.items()} == {
        "job": "job",
        "instance": "instance",
        "queue": "queue",
    }
    for selector, _ in found.values():
        assert METRIC.findall(selector) == ["omniq_task_events_total"]


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), ids


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    """No two panels, rows included, share a grid cell, and all fit in 24 columns."""
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["h"] >= 1
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']!r} is wider than the grid"
        if panel["type"] == "row":
            assert (grid["x"], grid["w"], grid["h"]) == (0, 24, 1), f"row {panel['title']!r}"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = taken.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r} at {(x, y)}"


def test_every_panel_and_target_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in data_panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_every_panel_has_a_unit(dashboard: dict[str, Any]) -> None:
    for panel in data_panels(dashboard):
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in UNITS, f"{panel['title']!r} has unit {unit!r}"


def test_ratio_panels_use_percentunit_between_0_and_1(dashboard: dict[str, Any]) -> None:
    for panel in data_panels(dashboard):
        if re.search(r"\bratio\b", panel["title"]):
            defaults = panel["fieldConfig"]["defaults"]
            assert (defaults["unit"], defaults["min"], defaults["max"]) == ("percentunit", 0, 1)


def test_every_expression_parses_in_prometheus(dashboard: dict[str, Any], tmp_path: Path) -> None:
    variables = defined_variables(dashboard)
    exprs = [substitute(expr, variables) for _, expr in expressions(dashboard)]
    exprs += [substitute(selector, variables) for _, selector, _ in variable_selectors(dashboard)]
    result = check_promql(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_the_promql_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    result = check_promql(["sum by (queue) (rate(omniq_task_events_total[1m])"], tmp_path)
    assert result.returncode == 1
    assert "FAILED" in result.stderr + result.stdout


def test_substitution_leaves_no_variable_behind(dashboard: dict[str, Any]) -> None:
    variables = defined_variables(dashboard)
    for where, expr in expressions(dashboard):
        assert "$" not in substitute(expr, variables), where


def metric_families(exprs: list[str]) -> set[str]:
    families = set()
    for expr in exprs:
        for name in METRIC.findall(expr):
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            families.add(family if family in HISTOGRAMS else name)
    return families


def test_overview_uses_every_contract_metric() -> None:
    """Unlike exporters whose dashboards skip metrics, every metric we export is on a panel."""
    used = metric_families([e for _, e in expressions(load(OVERVIEW))])
    assert used == CONTRACT_METRICS


def test_dashboards_use_only_contract_metrics(dashboard: dict[str, Any]) -> None:
    used = metric_families([e for _, e in expressions(dashboard)])
    assert used <= CONTRACT_METRICS, used - CONTRACT_METRICS


def test_histogram_quantiles_aggregate_by_le() -> None:
    """A histogram_quantile over an aggregation that drops `le` returns nothing."""
    for path in DASHBOARDS:
        for where, expr in expressions(load(path)):
            if "histogram_quantile" in expr:
                assert re.search(r"sum by \(([\w, ]*\b)?le\)", expr), where


def test_failing_queue_table_links_to_the_queue_dashboard() -> None:
    overview = load(OVERVIEW)
    queue_uid = load(QUEUE)["uid"]
    (table,) = [p for p in data_panels(overview) if p["type"] == "table"]
    links = [
        link
        for override in table["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]
    assert [link["url"].split("?")[0] for link in links] == [f"/d/{queue_uid}/omniq-queue"]
    assert "var-queue=${__data.fields.queue}" in links[0]["url"]


def test_provisioning_loads_the_dashboards_without_clicks() -> None:
    provisioning = GRAFANA_DIR / "provisioning"
    datasources = yaml.safe_load(
        (provisioning / "datasources" / "omniq-prometheus.yml").read_text(encoding="utf-8")
    )
    (ds,) = datasources["datasources"]
    assert (datasources["apiVersion"], ds["type"], ds["isDefault"]) == (1, "prometheus", True)
    providers = yaml.safe_load(
        (provisioning / "dashboards" / "omniq.yml").read_text(encoding="utf-8")
    )
    (provider,) = providers["providers"]
    assert (providers["apiVersion"], provider["type"]) == (1, "file")
    assert provider["options"]["path"].startswith("/")
