"""The shipped Prometheus config and rules, checked and unit-tested by the real promtool.

`promtool test rules` runs dashboards/prometheus/omniq-rules.test.yml, which shows every
alert firing and not firing. The mutation tests below prove those unit tests bite: a rule
that never fires, or that fires without waiting for its `for:`, makes them fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "dashboards" / "prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "omniq-rules.yml"
RULE_TESTS = PROM_DIR / "omniq-rules.test.yml"
DOCS = ROOT / "README.md"  # the alert table lives in its "Dashboards and alerts" section

JOB = "omniq-observe"
DEFAULT_PORT = 9464

ALERTS = [
    "OmniqTaskFailureRatioHigh",
    "OmniqQueueWaitHigh",
    "OmniqQueueBacklogGrowing",
    "OmniqTasksStuckInProgress",
    "OmniqProcessorLagHigh",
    "OmniqObserveDown",
    "OmniqObserveAbsent",
    "OmniqHandlerErrors",
]
CONTRACT_METRICS = frozenset(
    {
        "omniq_task_events_total",
        "omniq_task_duration_seconds_bucket",
        "omniq_task_queue_wait_seconds_bucket",
        "omniq_tasks_in_progress",
        "omniq_tasks_waiting",
        "omniq_task_failures_total",
        "omniq_task_retries_total",
        "omniq_observe_handler_errors_total",
        "omniq_observe_processor_lag_seconds",
    }
)
METRIC = re.compile(r"(?<![\w:])omniq_\w+(?![\w:])")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is required in CI: apt-get install prometheus")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules_by_kind() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rules = [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]
    return [r for r in rules if "record" in r], [r for r in rules if "alert" in r]


def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    records, alerts = rules_by_kind()
    result = run_promtool("check", "config", "prometheus.yml", cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: prometheus.yml is valid prometheus config file syntax" in result.stdout
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {len(records) + len(alerts)} rules found" in result.stdout


def test_prometheus_config_scrapes_serve_under_the_job_the_alerts_expect() -> None:
    config = load_yaml(CONFIG)
    assert config["rule_files"] == ["omniq-rules.yml"]
    (scrape,) = config["scrape_configs"]
    assert scrape["job_name"] == JOB
    assert scrape["metrics_path"] == "/metrics"
    (static,) = scrape["static_configs"]
    assert static["targets"] == [f"localhost:{DEFAULT_PORT}"]
    assert config["global"]["evaluation_interval"] == config["global"]["scrape_interval"]


def test_rules_file_is_valid() -> None:
    records, alerts = rules_by_kind()
    assert (len(records), len(alerts)) == (12, len(ALERTS))
    result = run_promtool("check", "rules", "omniq-rules.yml", cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records) + len(alerts)} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", "omniq-rules.test.yml", cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["Unit", "Testing:", "omniq-rules.test.yml", "SUCCESS"]


def test_recording_rules_follow_the_naming_convention() -> None:
    records, _ = rules_by_kind()
    for rule in records:
        level, metric, operations = rule["record"].split(":")
        assert re.fullmatch(r"queue(_event_type|_error_type)?", level), rule["record"]
        assert metric.startswith("omniq_") and not metric.endswith("_total"), rule["record"]
        assert re.fullmatch(r"(rate|ratio_rate|p\d\d_)5m|sum|deriv15m", operations), rule["record"]
        for label in level.split("_", 1)[1:]:
            assert f", {label})" in rule["expr"], rule["record"]
        assert "by (job, instance, " in rule["expr"], rule["record"]


def test_rules_use_only_contract_metrics() -> None:
    records, alerts = rules_by_kind()
    recorded = {r["record"] for r in records}
    for rule in records + alerts:
        for name in METRIC.findall(rule["expr"]):
            assert name in CONTRACT_METRICS, (rule.get("record") or rule["alert"], name)
    used_records = {
        token
        for rule in alerts
        for token in re.findall(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["expr"])
    }
    assert used_records <= recorded


def test_every_alert_documents_threshold_for_and_runbook() -> None:
    _, alerts = rules_by_kind()
    assert [a["alert"] for a in alerts] == ALERTS
    text = RULES.read_text(encoding="utf-8")
    docs = DOCS.read_text(encoding="utf-8")
    for alert in alerts:
        name = alert["alert"]
        assert set(alert["annotations"]) == {"summary", "description", "runbook"}, name
        assert all(len(v.split()) >= 4 for v in alert["annotations"].values()), name
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert re.fullmatch(r"\d+m", alert["for"]), name
        # The comment right above the rule states its threshold and `for:`.
        comment = text.split(f"- alert: {name}\n")[0].rsplit("\n\n", 1)[-1]
        assert "Threshold:" in comment and f"{alert['for']}" in comment, name
        # The README table has one row per alert with its `for:` and severity.
        (row,) = [line for line in docs.splitlines() if line.startswith(f"| `{name}` |")]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[3] == f"`{alert['for']}`", name
        assert cells[4] == alert["labels"]["severity"], name


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    cases = [
        case
        for group in load_yaml(RULE_TESTS)["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    for name in ALERTS:
        firing = [c for c in cases if c["alertname"] == name and c.get("exp_alerts")]
        silent = [c for c in cases if c["alertname"] == name and not c.get("exp_alerts")]
        assert firing and silent, name


def mutate(tmp_path: Path, alert: str, change: dict[str, str]) -> Path:
    """Copy rules and their tests to tmp_path with one alert changed; return the test file."""
    rules = load_yaml(RULES)
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    rule.update(change)
    (tmp_path / "omniq-rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False), "utf-8")
    shutil.copy(RULE_TESTS, tmp_path / "omniq-rules.test.yml")
    return tmp_path / "omniq-rules.test.yml"


@pytest.mark.parametrize("alert", ALERTS)
@pytest.mark.parametrize(
    "change",
    [{"expr": "vector(1) > 2"}, {"for": "0s"}],
    ids=["never-fires", "ignores-for"],
)
def test_unit_tests_catch_a_broken_alert(
    tmp_path: Path, alert: str, change: dict[str, str]
) -> None:
    mutate(tmp_path, alert, change)
    result = run_promtool("test", "rules", "omniq-rules.test.yml", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "FAILED:" in output
    assert f"alertname: {alert}" in output
