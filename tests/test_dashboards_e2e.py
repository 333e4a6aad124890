"""The shipped dashboards and rules against live data.

A real `omniq-observe serve` reads a SQLite event store; a real Prometheus scrapes it every
second with the shipped prometheus.yml (only the target and the intervals changed) and
evaluates the shipped omniq-rules.yml. A scripted workload across three queues is logged
in two identical phases: phase 1 creates every series, phase 2 makes every rate non-zero.
Then every panel query of both dashboards and every recording rule must return data with
sane values, and the counts, ratios and quantiles must be exactly what was scripted.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from _helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
GRAFANA_DIR = ROOT / "dashboards" / "grafana"
PROM_DIR = ROOT / "dashboards" / "prometheus"
OVERVIEW = GRAFANA_DIR / "omniq-overview.json"
QUEUE = GRAFANA_DIR / "omniq-queue.json"

JOB = "omniq-observe"
QUEUES = ("billing", "emails", "reports")
EVENT_TYPES = ("ENQUEUED", "STARTED", "COMPLETED", "FAILED", "RETRIED", "CANCELLED", "TIMEOUT")
RATE_INTERVAL = "1m"
DEADLINE = 60.0
HISTOGRAMS = frozenset({"omniq_task_duration_seconds", "omniq_task_queue_wait_seconds"})
METRIC = re.compile(r"(?<![\w:])omniq_\w+(?![\w:])")
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


# ------------------------------------------------------------------ the scripted workload
@dataclass(frozen=True)
class Task:
    """One task's life: how long it waits, how long each attempt runs, how attempts end."""

    queue: str
    wait: float
    duration: float
    # The terminal event of each attempt; None keeps the last attempt in progress.
    outcomes: tuple[tuple[str, dict[str, Any]] | None, ...]
    # The first worker died: a second STARTED, with no RETRIED, supersedes its attempt.
    restarted: bool = False


COMPLETED = ("COMPLETED", {"result": "ok"})
SMTP = ("FAILED", {"error": "SMTPError: 550 mailbox unavailable", "error_type": "SMTPError"})
CONN = ("FAILED", {"error": "ConnectionError: reset by peer", "error_type": "ConnectionError"})
RENDER = ("FAILED", {"error": "RenderError: font missing", "error_type": "RenderError"})
AMOUNT = ("FAILED", {"error": "ValueError: negative amount", "error_type": "ValueError"})
DECLINED = ("FAILED", {"error": "CardDeclined: insufficient funds", "error_type": "CardDeclined"})
TIMEOUT = ("TIMEOUT", {"timeout_seconds": 30})
CANCELLED = ("CANCELLED", {"reason": "user cancelled"})

# Every queue has every kind of event. All attempts of a queue run equally long and all
# its tasks wait equally long (values away from bucket bounds), so every percentile of a
# queue lies in the one bucket that holds that value.
WORKLOAD: tuple[Task, ...] = (
    # emails: 8 completed (one after a retry, one restarted by a second worker), 3 failed,
    # 1 timed out, 1 cancelled, 1 in progress. Its first task's COMPLETED is delivered twice.
    *(Task("emails", 0.07, 0.15, (COMPLETED,)) for _ in range(6)),
    *(Task("emails", 0.07, 0.15, (SMTP,)) for _ in range(2)),
    Task("emails", 0.07, 0.15, (CONN, COMPLETED)),
    Task("emails", 0.07, 0.15, (TIMEOUT,)),
    Task("emails", 0.07, 0.15, (CANCELLED,)),
    Task("emails", 0.07, 0.15, (None,)),
    Task("emails", 0.07, 0.15, (COMPLETED,), restarted=True),
    # reports: 4 completed (one after a timeout and a retry), 1 failed, 1 cancelled,
    # 2 in progress.
    *(Task("reports", 22.0, 44.0, (COMPLETED,)) for _ in range(3)),
    Task("reports", 22.0, 44.0, (RENDER,)),
    Task("reports", 22.0, 44.0, (TIMEOUT, COMPLETED)),
    Task("reports", 22.0, 44.0, (CANCELLED,)),
    *(Task("reports", 22.0, 44.0, (None,)) for _ in range(2)),
    # billing: 5 completed (one after a retry), 2 failed, 1 timed out, 1 cancelled,
    # nothing left in progress.
    *(Task("billing", 3.3, 2.2, (COMPLETED,)) for _ in range(4)),
    Task("billing", 3.3, 2.2, (AMOUNT,)),
    Task("billing", 3.3, 2.2, (DECLINED, COMPLETED)),
    Task("billing", 3.3, 2.2, (TIMEOUT,)),
    Task("billing", 3.3, 2.2, (CANCELLED,)),
)
PHASES = 2


Event = tuple[str, str, str, datetime, dict[str, Any]]  # event_id, task_id, type, time, details


def phase_events(phase: int, now: datetime) -> list[Event]:
    """The events of one phase, in the order they happen; timestamps end at ``now``.

    The first task's terminal event comes twice (same event id): an at-least-once
    redelivery, which must be counted as a duplicate and nowhere else.
    """
    events: list[Event] = []
    for n, task in enumerate(WORKLOAD):
        task_id = f"p{phase}-{task.queue}-{n}"

        def emit(
            event_type: str, at: datetime, details: dict[str, Any], task_id: str = task_id
        ) -> None:
            events.append((f"{task_id}-{len(events)}", task_id, event_type, at, details))

        retries = len(task.outcomes) - 1
        span = len(task.outcomes) * (task.wait + task.duration) + retries
        t = now - timedelta(seconds=span + (task.duration if task.restarted else 0))
        emit("ENQUEUED", t, {"queue_name": task.queue})
        for attempt, outcome in enumerate(task.outcomes, start=1):
            if attempt > 1:
                t += timedelta(seconds=1)
                emit("RETRIED", t, {"attempt": attempt, "max_attempts": 3})
            t += timedelta(seconds=task.wait)
            emit("STARTED", t, {"worker_id": f"worker-{n % 3}"})
            if task.restarted and attempt == 1:
                t += timedelta(seconds=task.duration)
                emit("STARTED", t, {"worker_id": "worker-spare"})
            if outcome is None:
                break
            t += timedelta(seconds=task.duration)
            emit(outcome[0], t, dict(outcome[1]))
        if n == 0:
            events.append(events[-1])
    return events


def attempts() -> Iterator[tuple[Task, tuple[str, dict[str, Any]] | None]]:
    for task in WORKLOAD:
        for outcome in task.outcomes:
            yield task, outcome


def expected_events() -> dict[tuple[str, str], float]:
    """Events by (queue, event type) after both phases, zeros included."""
    counts: Counter[tuple[str, str]] = Counter()
    for task in WORKLOAD:
        counts[task.queue, "ENQUEUED"] += PHASES
        counts[task.queue, "RETRIED"] += PHASES * (len(task.outcomes) - 1)
        counts[task.queue, "STARTED"] += PHASES * task.restarted
    for task, outcome in attempts():
        counts[task.queue, "STARTED"] += PHASES
        if outcome is not None:
            counts[task.queue, outcome[0]] += PHASES
    return {(q, t): float(counts[q, t]) for q in QUEUES for t in EVENT_TYPES}


def expected_durations() -> dict[tuple[str, str], float]:
    """Duration observations by (queue, status)."""
    counts: Counter[tuple[str, str]] = Counter()
    for task, outcome in attempts():
        if outcome is not None:
            counts[task.queue, outcome[0].lower()] += PHASES
    return {key: float(n) for key, n in counts.items()}


def phase_ratio(queue: str, types: set[str]) -> float:
    """The share of finished attempts of ``queue`` whose terminal event is in ``types``."""
    finished = [o[0] for t, o in attempts() if t.queue == queue and o and o[0] != "CANCELLED"]
    return sum(1 for f in finished if f in types) / len(finished)


def test_the_workload_script_is_what_the_assertions_say() -> None:
    """Pin the script: a change to it must be a deliberate change to these numbers."""
    events = expected_events()
    assert {t: sum(events[q, t] for q in QUEUES) for t in EVENT_TYPES} == {
        "ENQUEUED": 58.0,
        "STARTED": 66.0,
        "COMPLETED": 34.0,
        "FAILED": 12.0,
        "RETRIED": 6.0,
        "CANCELLED": 6.0,
        "TIMEOUT": 6.0,
    }
    assert expected_durations() == {
        ("emails", "completed"): 16.0,
        ("emails", "failed"): 6.0,
        ("emails", "timeout"): 2.0,
        ("emails", "cancelled"): 2.0,
        ("reports", "completed"): 8.0,
        ("reports", "failed"): 2.0,
        ("reports", "timeout"): 2.0,
        ("reports", "cancelled"): 2.0,
        ("billing", "completed"): 10.0,
        ("billing", "failed"): 4.0,
        ("billing", "timeout"): 2.0,
        ("billing", "cancelled"): 2.0,
    }
    assert [phase_ratio(q, {"COMPLETED"}) for q in QUEUES] == [5 / 8, 8 / 12, 4 / 6]
    assert len(phase_events(1, datetime.now(timezone.utc))) == 94 + 1  # + the duplicate


# ------------------------------------------------------------------------- processes
def required_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI: apt-get install prometheus")
        pytest.skip(f"{name} is not installed (Debian package prometheus)")
    return path


@dataclass
class Process:
    """A subprocess whose output goes to a file, for failure messages."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return f"--- {self.name} output ---\n" + self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)


def start(name: str, argv: list[str], workdir: Path) -> Process:
    log = workdir / f"{name}.log"
    # serve reads its settings from OMNIQ_OBSERVE_*; the developer's own must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_OBSERVE_")}
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
        )
    return Process(name, popen, log)


def poll(what: str, check: Callable[[], bool], *processes: Process) -> None:
    """Wait until ``check()`` is true; fail with the processes' output at the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        for process in processes:
            if process.popen.poll() is not None:
                pytest.fail(f"{process.name} exited while waiting for {what}\n{process.output()}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out waiting for {what}\n" + "\n".join(p.output() for p in processes)
            )
        time.sleep(0.1)


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


# ------------------------------------------------------------------------ prometheus
@dataclass
class Prometheus:
    url: str
    process: Process
    serve: Process
    target: str
    phase1_complete_at: float = 0.0
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            body = http_get(f"{self.url}/api/v1/{path}?{query}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise AssertionError(f"{path} {params}: HTTP {exc.code}: {detail}") from exc
        reply = json.loads(body)
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """Instant query: [(labels, value)] of a vector, or one element for a scalar."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def by(self, expr: str, *labels: str, at: float | None = None) -> dict[tuple[str, ...], float]:
        return {tuple(m.get(label, "") for label in labels): v for m, v in self.query(expr, at)}

    def value(self, expr: str, at: float | None = None) -> float | None:
        result = self.query(expr, at)
        assert len(result) <= 1, (expr, result)
        return result[0][1] if result else None


def serve_samples(port: int) -> dict[str, float]:
    """Sum of the samples of each omniq_* metric family that `serve` exposes now."""
    from prometheus_client.parser import text_string_to_metric_families

    text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def log_phase(storage: Path, phase: int) -> None:
    from omniq_observe.backend import SQLiteBackend
    from omniq_observe.events import EventLogger
    from omniq_observe.models.event import TaskEvent

    logger = EventLogger(event_storage=SQLiteBackend(storage))
    try:
        for event_id, task_id, event_type, timestamp, details in phase_events(
            phase, datetime.now(timezone.utc)
        ):
            logger.log_event(
                TaskEvent(
                    event_id=event_id,
                    task_id=task_id,
                    event_type=event_type,
                    timestamp=timestamp,
                    details=details,
                )
            )
    finally:
        logger.close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prometheus_bin = required_binary("prometheus")
    workdir = tmp_path_factory.mktemp("e2e")
    storage = workdir / "e.db"
    serve_port, prom_port = free_port(), free_port()

    serve = start(
        "serve",
        [
            sys.executable,
            "-m",
            "omniq_observe",
            "serve",
            "--storage",
            f"sqlite:///{storage}",
            "--port",
            str(serve_port),
        ],
        workdir,
    )
    processes = [serve]
    try:
        poll(
            "serve's /metrics",
            lambda: bool(http_get(f"http://127.0.0.1:{serve_port}/metrics")),
            serve,
        )

        # The shipped config with only the target, the intervals and the rules path changed.
        config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text(encoding="utf-8"))
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config["rule_files"] = [str(PROM_DIR / name) for name in config["rule_files"]]
        (scrape,) = config["scrape_configs"]
        scrape["static_configs"] = [{"targets": [f"127.0.0.1:{serve_port}"]}]
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        prom = start(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            workdir,
        )
        processes.append(prom)
        p = Prometheus(f"http://127.0.0.1:{prom_port}", prom, serve, f"127.0.0.1:{serve_port}")
        # 503 until the TSDB is open and the rules are loaded.
        poll("Prometheus to be ready", lambda: bool(http_get(f"{p.url}/-/ready")), serve, prom)
        poll(
            "Prometheus to scrape serve", lambda: p.value(f'up{{job="{JOB}"}}') == 1.0, serve, prom
        )

        events = expected_events()
        phase1_total = sum(events.values()) / PHASES
        final_total = sum(events.values())
        selector = f'omniq_task_events_total{{job="{JOB}"}}'
        unpaired = f'omniq_observe_unpaired_events_total{{job="{JOB}"}}'

        def log_and_settle(phase: int, total: float) -> None:
            """Log ``phase``, then wait for serve to process it and decide its superseded
            start (it waits for the reorder window: 10 s of event time, by the wall clock
            once serve has caught up), and for a Prometheus scrape taken after that."""
            log_phase(storage, phase)
            poll(
                f"serve to process phase {phase}",
                lambda: serve_samples(serve_port).get("omniq_task_events_total") == total,
                serve,
            )
            poll(
                f"serve to decide phase {phase}'s superseded start",
                lambda: serve_samples(serve_port).get("omniq_observe_unpaired_events_total")
                == 2 * phase,
                serve,
            )
            poll(
                f"Prometheus to scrape phase {phase} and its decided superseded start",
                lambda: p.value(f"sum({selector})") == total
                and p.value(f"sum({unpaired})") == 2 * phase,
                serve,
                prom,
            )

        log_and_settle(1, phase1_total)
        # A scrape that saw all of phase 1 and none of phase 2: windows starting there
        # see phase 2 alone, whatever a scrape taken during phase 1 saw.
        p.phase1_complete_at = float(p.value(f"min(timestamp({selector}))") or 0.0)
        log_and_settle(2, final_total)
        scraped_at = float(p.value(f"min(timestamp({selector}))") or 0.0)
        poll(
            "a few scrapes",
            lambda: (p.value(f'count_over_time(up{{job="{JOB}"}}[5m])') or 0) >= 5,
            serve,
            prom,
        )

        p.rules = {
            rule.get("name", ""): rule
            for group in p.api("rules")["groups"]
            for rule in group["rules"]
        }
        records = [name for name, r in p.rules.items() if r["type"] == "recording"]

        def rules_evaluated_after_phase_2() -> bool:
            return all((p.value(f"max(timestamp({name}))") or 0.0) > scraped_at for name in records)

        poll(
            "every recording rule to be evaluated on phase 2",
            rules_evaluated_after_phase_2,
            serve,
            prom,
        )
        yield p
    finally:
        for process in reversed(processes):
            process.stop()


# ------------------------------------------------------------------- dashboard queries
def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    title: str
    unit: str
    ref: str
    expr: str
    queue: str


def panel_queries() -> list[PanelQuery]:
    """Every target of both dashboards: the overview for all queues, the drill-down for
    each queue."""
    found = []
    for path, queues in ((OVERVIEW, (".*",)), (QUEUE, QUEUES)):
        dashboard = load(path)
        for queue in queues:
            for panel in dashboard["panels"]:
                if panel["type"] == "row":
                    continue
                unit = panel["fieldConfig"]["defaults"]["unit"]
                for target in panel["targets"]:
                    found.append(
                        PanelQuery(
                            dashboard["uid"],
                            panel["title"],
                            unit,
                            target["refId"],
                            target["expr"],
                            queue,
                        )
                    )
    return found


def substitute(expr: str, queue: str, rate_interval: str = RATE_INTERVAL) -> str:
    values = {
        "job": JOB,
        "instance": ".*",
        "queue": queue,
        "datasource": "",
        "__rate_interval": rate_interval,
        "__interval": "1s",
        "__range": "1h",
    }
    return VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def check_sane(unit: str, expr: str, value: float) -> None:
    """Values a user would believe: finite, and within what the unit allows."""
    assert math.isfinite(value), f"{value} from {expr}"
    assert value >= 0, f"{value} from {expr}"
    if unit == "percentunit":
        assert value <= 1, f"ratio {value} from {expr}"
    if unit == "s":
        assert value <= 3600, f"{value}s is past the last bucket, from {expr}"


PANEL_QUERIES = panel_queries()


@pytest.mark.parametrize(
    "query",
    PANEL_QUERIES,
    ids=[f"{q.dashboard}:{q.queue.strip('.*') or 'all'}:{q.title}:{q.ref}" for q in PANEL_QUERIES],
)
def test_every_panel_query_returns_sane_data(prometheus: Prometheus, query: PanelQuery) -> None:
    expr = substitute(query.expr, query.queue)
    result = prometheus.query(expr)
    assert result, f"no data for {query.title!r}: {expr}"
    for _, value in result:
        check_sane(query.unit, expr, value)


def test_every_recording_rule_returns_sane_data(prometheus: Prometheus) -> None:
    records = {n: r for n, r in prometheus.rules.items() if r["type"] == "recording"}
    assert len(records) == 12
    for name, rule in records.items():
        result = prometheus.query(name)
        assert result, f"{name} recorded nothing; expr {rule['query']}"
        for labels, value in result:
            assert labels["job"] == JOB and labels["instance"] == prometheus.target, labels
            operation = name.rsplit(":", 1)[1]
            if operation == "deriv15m":  # a slope: may be below 0
                assert math.isfinite(value), f"{value} from {name}"
                continue
            unit = {"ratio_rate5m": "percentunit", "rate5m": "ops", "sum": "short"}.get(
                operation, "s"
            )
            check_sane(unit, name, value)
        # Every queue is there: every queue has every kind of event.
        assert {labels["queue"] for labels, _ in result} == set(QUEUES), name


def test_prometheus_loaded_every_shipped_rule_and_they_evaluate(prometheus: Prometheus) -> None:
    shipped = yaml.safe_load((PROM_DIR / "omniq-rules.yml").read_text(encoding="utf-8"))
    names = {r.get("record") or r["alert"] for g in shipped["groups"] for r in g["rules"]}
    assert set(prometheus.rules) == names
    for name, rule in prometheus.rules.items():
        assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), name


def test_alerts_see_the_workload(prometheus: Prometheus) -> None:
    """Every queue fails more than 10% of its attempts: the alert is pending (for: 10m)."""
    alerts: list[dict[str, Any]] = []

    def failure_ratio_alerts() -> list[str]:
        alerts[:] = prometheus.api("alerts")["alerts"]
        return sorted(
            a["labels"]["queue"]
            for a in alerts
            if a["labels"]["alertname"] == "OmniqTaskFailureRatioHigh"
        )

    # The alert group runs next to the recording group, up to one interval behind it.
    poll(
        "the failure ratio alert on every queue",
        lambda: failure_ratio_alerts() == sorted(QUEUES),
        prometheus.serve,
        prometheus.process,
    )
    assert {a["state"] for a in alerts} == {"pending"}
    assert {a["labels"]["alertname"] for a in alerts} == {"OmniqTaskFailureRatioHigh"}


# ------------------------------------------------------------------------ exact values
def test_event_counts_are_exactly_the_script(prometheus: Prometheus) -> None:
    got = prometheus.by(
        f'sum by (queue, event_type) (omniq_task_events_total{{job="{JOB}"}})',
        "queue",
        "event_type",
    )
    # Zeros included: every known event type is pre-created once a queue is seen.
    assert got == expected_events()
    assert prometheus.value('sum(omniq_task_events_total{event_type="COMPLETED"})') == 34.0


def test_failures_retries_and_in_progress_are_exactly_the_script(prometheus: Prometheus) -> None:
    failures = prometheus.by(
        f'sum by (queue, error_type) (omniq_task_failures_total{{job="{JOB}"}})',
        "queue",
        "error_type",
    )
    assert failures == {
        ("emails", "SMTPError"): 4.0,
        ("emails", "ConnectionError"): 2.0,
        ("reports", "RenderError"): 2.0,
        ("billing", "ValueError"): 2.0,
        ("billing", "CardDeclined"): 2.0,
    }
    retries = prometheus.by(f'sum by (queue) (omniq_task_retries_total{{job="{JOB}"}})', "queue")
    assert retries == {("emails",): 2.0, ("reports",): 2.0, ("billing",): 2.0}
    in_progress = prometheus.by(f'sum by (queue) (omniq_tasks_in_progress{{job="{JOB}"}})', "queue")
    assert in_progress == {("emails",): 2.0, ("reports",): 4.0, ("billing",): 0.0}


def test_histograms_count_every_attempt_exactly(prometheus: Prometheus) -> None:
    durations = prometheus.by(
        f'sum by (queue, status) (omniq_task_duration_seconds_count{{job="{JOB}"}})',
        "queue",
        "status",
    )
    assert durations == expected_durations()
    sums = prometheus.by(
        f'sum by (queue) (omniq_task_duration_seconds_sum{{job="{JOB}"}})', "queue"
    )
    expected_sums = dict.fromkeys(QUEUES, 0.0)
    for task, outcome in attempts():
        if outcome is not None:
            expected_sums[task.queue] += PHASES * task.duration
    assert sums == pytest.approx({(q,): expected_sums[q] for q in QUEUES})
    # One queue wait per attempt: ENQUEUED or RETRIED to STARTED; a restart opens none.
    waits = prometheus.by(
        f'sum by (queue) (omniq_task_queue_wait_seconds_count{{job="{JOB}"}})', "queue"
    )
    attempts_by_queue = Counter(task.queue for task, _ in attempts())
    assert waits == {(q,): float(PHASES * attempts_by_queue[q]) for q in QUEUES}


def test_pipeline_metrics_are_exactly_the_script(prometheus: Prometheus) -> None:
    """Every stored event is processed (the duplicate too); the duplicate and the restart
    are the only unpaired events; no handler failed; no label overflowed; caught up."""
    processed = prometheus.by(f'omniq_observe_events_processed_total{{job="{JOB}"}}', "processor")
    assert processed == {("default",): sum(expected_events().values()) + PHASES}
    unpaired = prometheus.by(f'omniq_observe_unpaired_events_total{{job="{JOB}"}}', "reason")
    assert {r: v for r, v in unpaired.items() if v} == {
        ("duplicate",): float(PHASES),
        ("superseded",): float(PHASES),
    }
    assert ("expired",) in unpaired  # pre-created at zero, so its panel has a line
    errors = prometheus.by(f'omniq_observe_handler_errors_total{{job="{JOB}"}}', "handler")
    assert errors and set(errors.values()) == {0.0}
    overflow = prometheus.by(f'omniq_observe_label_overflow_total{{job="{JOB}"}}', "label")
    assert ("queue",) in overflow and set(overflow.values()) == {0.0}
    lag = prometheus.by(f'omniq_observe_processor_lag_seconds{{job="{JOB}"}}', "processor")
    assert lag == {("default",): 0.0}


def bucket_bounds(prometheus: Prometheus, metric: str, value: float) -> tuple[float, float]:
    """The (lower, upper] bounds of the bucket of ``metric`` that holds ``value``."""
    les = sorted({float(m["le"]) for m, _ in prometheus.query(f'{metric}_bucket{{job="{JOB}"}}')})
    upper = min(le for le in les if le >= value)
    lower = max([0.0, *(le for le in les if le < value)])
    assert math.isfinite(upper), (metric, value, les)
    return lower, upper


def test_quantiles_fall_in_the_scripted_bucket(prometheus: Prometheus) -> None:
    """Each queue's attempts all take one duration and wait one time: every percentile,
    from the dashboards and from the recording rules, lies in that bucket."""
    for queue in QUEUES:
        (wait,) = {t.wait for t in WORKLOAD if t.queue == queue}
        (duration,) = {t.duration for t in WORKLOAD if t.queue == queue}
        for metric, value in (
            ("omniq_task_duration_seconds", duration),
            ("omniq_task_queue_wait_seconds", wait),
        ):
            lower, upper = bucket_bounds(prometheus, metric, value)
            quantiles = [
                name
                for name, r in prometheus.rules.items()
                if r["type"] == "recording" and name.startswith(f"queue:{metric}:p")
            ]
            assert len(quantiles) == (3 if "duration" in metric else 2)
            exprs = [f'{name}{{queue="{queue}"}}' for name in quantiles] + [
                f"histogram_quantile({q}, sum by (le) "
                f'(rate({metric}_bucket{{queue="{queue}"}}[{RATE_INTERVAL}])))'
                for q in ("0.5", "0.95", "0.99")
            ]
            for expr in exprs:
                ((_, got),) = prometheus.query(expr)
                assert lower < got <= upper, (expr, got, (lower, upper))


def test_ratio_panels_show_exactly_the_scripted_ratios(prometheus: Prometheus) -> None:
    """Over a window that starts at a scrape of all of phase 1, rates are phase 2 alone,
    so the dashboards' and the rules' ratio formulas give the script's ratios exactly."""
    now = round(time.time(), 3)
    # The window [now - window, now] is closed: it holds that scrape and all later ones.
    window = f"{math.ceil((now - prometheus.phase1_complete_at) * 1000)}ms"
    overview = {p["title"]: p for p in load(OVERVIEW)["panels"]}
    (by_queue,) = overview["Success ratio by queue"]["targets"]
    got = prometheus.by(substitute(by_queue["expr"], ".*", window), "queue", at=now)
    assert got == pytest.approx({(q,): phase_ratio(q, {"COMPLETED"}) for q in QUEUES})

    (overall,) = overview["Success ratio"]["targets"]
    finished = [o[0] for _, o in attempts() if o and o[0] != "CANCELLED"]
    expect = finished.count("COMPLETED") / len(finished)
    got_overall = prometheus.value(substitute(overall["expr"], ".*", window), at=now)
    assert got_overall == pytest.approx(expect)

    for name, types in (
        ("queue:omniq_task_success:ratio_rate5m", {"COMPLETED"}),
        ("queue:omniq_task_failure:ratio_rate5m", {"FAILED", "TIMEOUT"}),
    ):
        expr = prometheus.rules[name]["query"].replace("[5m]", f"[{window}]")
        got = prometheus.by(expr, "queue", at=now)
        assert got == pytest.approx({(q,): phase_ratio(q, types) for q in QUEUES}), name


# --------------------------------------------------------------- variables and coverage
def test_dashboard_variables_list_the_live_job_instance_and_queues(prometheus: Prometheus) -> None:
    expected = {"job": [JOB], "instance": [prometheus.target], "queue": sorted(QUEUES)}
    for path in (OVERVIEW, QUEUE):
        for var in load(path)["templating"]["list"]:
            if var["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
            assert match, var["definition"]
            selector = substitute(match.group(1), ".*")
            values = prometheus.api(f"label/{match.group(2)}/values", **{"match[]": selector})
            assert values == expected[var["name"]], (path.name, var["name"])


def test_every_exported_metric_is_on_the_overview(prometheus: Prometheus) -> None:
    """Every omniq_* family serve exports is used by a panel, and none is left unused."""
    names = prometheus.api("label/__name__/values", **{"match[]": f'{{job="{JOB}"}}'})
    exported = set()
    for name in names:
        if not name.startswith("omniq_") or name.endswith("_created"):
            continue
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        exported.add(family if family in HISTOGRAMS else name)
    used = set()
    for panel in load(OVERVIEW)["panels"]:
        for target in panel.get("targets", []):
            for name in METRIC.findall(target["expr"]):
                family = re.sub(r"_(bucket|sum|count)$", "", name)
                used.add(family if family in HISTOGRAMS else name)
    assert exported - used == set(), "exported but on no panel"
    assert used - exported == set(), "on a panel but not exported by serve"
