"""`omniq-observe serve` as a real subprocess: exact metrics, promtool, signals, errors."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from _helpers import IN_CI, async_wait_until, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from omniq_observe.backend import MemoryBackend, SQLiteBackend
from omniq_observe.cli.serve import run_server
from omniq_observe.events import EventLogger
from omniq_observe.models.event import TaskEvent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
T0 = datetime.now(timezone.utc) - timedelta(minutes=5)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def value(got: Samples, name: str, **labels: str) -> float | None:
    return got.get((name, frozenset(labels.items())))


def processed(got: Samples) -> float | None:
    return value(got, "omniq_observe_events_processed_total", processor="default")


def workload() -> list[TaskEvent]:
    """3 queues: successes, failures with error types, a retry, timeouts, cancellations,
    and tasks left in progress. Durations and waits are exact binary fractions."""
    events: list[TaskEvent] = []

    def task(
        task_id: str, queue: str, at: float, *steps: tuple[str, float, dict[str, Any]]
    ) -> None:
        events.append(TaskEvent(task_id=task_id, event_type="ENQUEUED",
                                timestamp=T0 + timedelta(seconds=at),
                                details={"queue_name": queue}))
        for kind, t, details in steps:
            events.append(TaskEvent(task_id=task_id, event_type=kind,
                                    timestamp=T0 + timedelta(seconds=at + t), details=details))

    for i in range(4):
        task(f"e{i}", "emails", i, ("STARTED", 0.25, {}), ("COMPLETED", 0.75, {}))
    task("e-fail", "emails", 10, ("STARTED", 0.5, {}),
         ("FAILED", 2.5, {"error": "SMTPError: 550"}))
    task("e-retry", "emails", 11, ("STARTED", 0.5, {}),
         ("FAILED", 1.5, {"error": "x", "error_type": "ConnectionError"}),
         ("RETRIED", 2, {"attempt": 2}), ("STARTED", 2.125, {}), ("COMPLETED", 3.125, {}))
    task("e-open", "emails", 12, ("STARTED", 1, {}))
    task("r0", "reports", 0, ("STARTED", 2, {}), ("COMPLETED", 6, {}))
    task("r-timeout", "reports", 1, ("STARTED", 2, {}), ("TIMEOUT", 32, {"timeout_seconds": 30}))
    task("r-cancel", "reports", 2, ("CANCELLED", 1, {"reason": "user"}))
    task("r-open", "reports", 3, ("STARTED", 4, {}))
    task("b0", "billing", 0, ("STARTED", 0.5, {}), ("FAILED", 1, {"error": "ValueError: neg"}))
    task("b1", "billing", 1, ("STARTED", 0.5, {}), ("CANCELLED", 0.75, {"reason": "admin"}))
    return events


class Serve:
    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.db = tmp_path / "events.db"
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "omniq_observe", "serve", "--storage",
                 f"sqlite:///{self.db}", "--port", str(self.port), "--log-format", "json", *args],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def scrape_when(self, check: Any) -> Samples:
        def ready() -> Samples | None:
            assert self.popen.poll() is None, self.output()
            try:
                got = scrape(self.port)
            except OSError:
                return None
            return got if check(got) else None

        result: Samples = wait_until(ready, timeout=30, what="serve to catch up")
        return result

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=15)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path)
    yield s
    if s.popen.poll() is None:
        s.popen.kill()
        s.popen.wait()


def log_events(db: Path, events: list[TaskEvent]) -> None:
    storage = SQLiteBackend(db)
    with EventLogger(event_storage=storage) as logger:
        for event in events:
            logger.log_event(event)
    storage.close_blocking()


def test_serve_exports_exactly_the_scripted_workload(serve: Serve) -> None:
    events = workload()
    log_events(serve.db, events)
    got = serve.scrape_when(lambda s: processed(s) == len(events))
    count = "omniq_task_events_total"
    expected = {
        ("emails", "ENQUEUED"): 7, ("emails", "STARTED"): 8, ("emails", "COMPLETED"): 5,
        ("emails", "FAILED"): 2, ("emails", "RETRIED"): 1, ("emails", "TIMEOUT"): 0,
        ("emails", "CANCELLED"): 0,
        ("reports", "ENQUEUED"): 4, ("reports", "STARTED"): 3, ("reports", "COMPLETED"): 1,
        ("reports", "TIMEOUT"): 1, ("reports", "CANCELLED"): 1, ("reports", "FAILED"): 0,
        ("reports", "RETRIED"): 0,
        ("billing", "ENQUEUED"): 2, ("billing", "STARTED"): 2, ("billing", "FAILED"): 1,
        ("billing", "CANCELLED"): 1, ("billing", "COMPLETED"): 0, ("billing", "TIMEOUT"): 0,
        ("billing", "RETRIED"): 0,
    }
    for (queue, kind), n in expected.items():
        assert value(got, count, queue=queue, event_type=kind) == n, (queue, kind)
    duration = "omniq_task_duration_seconds"
    for queue, status, n, total in (
        ("emails", "completed", 5, 4 * 0.5 + 1.0), ("emails", "failed", 2, 2.0 + 1.0),
        ("reports", "completed", 1, 4.0), ("reports", "timeout", 1, 30.0),
        ("billing", "failed", 1, 0.5), ("billing", "cancelled", 1, 0.25),
        ("reports", "cancelled", 0, 0.0),
    ):
        assert value(got, f"{duration}_count", queue=queue, status=status) == n, (queue, status)
        assert value(got, f"{duration}_sum", queue=queue, status=status) == pytest.approx(
            total, abs=1e-6
        )
    wait = "omniq_task_queue_wait_seconds"
    assert value(got, f"{wait}_count", queue="emails") == 8
    assert value(got, f"{wait}_sum", queue="emails") == pytest.approx(
        4 * 0.25 + 0.5 + 0.5 + 0.125 + 1, abs=1e-6
    )
    assert value(got, f"{wait}_sum", queue="reports") == pytest.approx(2 + 2 + 4, abs=1e-6)
    assert value(got, "omniq_tasks_in_progress", queue="emails") == 1
    assert value(got, "omniq_tasks_in_progress", queue="reports") == 1
    assert value(got, "omniq_tasks_in_progress", queue="billing") == 0
    failures = "omniq_task_failures_total"
    assert value(got, failures, queue="emails", error_type="SMTPError") == 1
    assert value(got, failures, queue="emails", error_type="ConnectionError") == 1
    assert value(got, failures, queue="billing", error_type="ValueError") == 1
    assert value(got, "omniq_task_retries_total", queue="emails") == 1
    assert value(got, "omniq_observe_handler_errors_total", handler="prometheus") == 0
    assert value(got, "omniq_observe_processor_lag_seconds", processor="default") == 0
    promtool_check(serve.port)
    assert serve.stop() == 0


def promtool_check(port: int) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool is required in CI (Debian package prometheus)")
        return
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_sigterm_stops_within_5s_with_the_checkpoint_committed(serve: Serve) -> None:
    events = workload()
    log_events(serve.db, events)
    serve.scrape_when(lambda s: processed(s) == len(events))
    started = time.monotonic()
    serve.popen.send_signal(signal.SIGTERM)
    assert serve.popen.wait(timeout=10) == 0, serve.output()
    assert time.monotonic() - started < 5.0

    async def committed() -> tuple[Any, Any]:
        async with SQLiteBackend(serve.db) as storage:
            return await storage.get_position("default"), await storage.last_position()

    position, last = asyncio.run(committed())
    assert position == last


def test_sigint_stops_too(serve: Serve) -> None:
    serve.scrape_when(lambda s: True)
    serve.popen.send_signal(signal.SIGINT)
    assert serve.popen.wait(timeout=10) == 0


def test_the_latest_event_shows_up_on_metrics(serve: Serve) -> None:
    serve.scrape_when(lambda s: True)
    log_events(serve.db, [TaskEvent(task_id="x", event_type="ENQUEUED", details={"queue": "live"})])
    got = serve.scrape_when(
        lambda s: value(s, "omniq_task_events_total", queue="live", event_type="ENQUEUED") == 1
    )
    assert value(got, "omniq_tasks_in_progress", queue="live") == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nonsense", "is not a URL"),
        ("ftp://host/x", "unsupported scheme"),
        ("redis://127.0.0.1:1/0", "cannot reach storage redis://127.0.0.1:1/0: "),
        (
            "sqlite:////nonexistent-dir/x/events.db",
            "cannot reach storage sqlite:////nonexistent-dir/x/events.db: ",
        ),
    ],
)
def test_bad_storage_prints_one_line_and_exits_2(url: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "omniq_observe", "serve", "--storage", url, "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("omniq-observe serve: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OMNIQ_OBSERVE_STORAGE": f"sqlite:///{tmp_path / 'env.db'}",
           "OMNIQ_OBSERVE_PORT": str(port), "OMNIQ_OBSERVE_NAME": "from-env",
           "OMNIQ_OBSERVE_LOG_FORMAT": "json"}
    popen = subprocess.Popen([sys.executable, "-m", "omniq_observe", "serve"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def exported() -> bool:
            try:
                got = scrape(port)
            except OSError:
                return False
            return value(got, "omniq_observe_processor_lag_seconds", processor="from-env") == 0

        wait_until(exported, timeout=30, what="serve configured from the environment")
    finally:
        popen.send_signal(signal.SIGTERM)
        assert popen.wait(timeout=10) == 0


async def test_run_server_reports_its_port_and_stops_on_request() -> None:
    storage = MemoryBackend()
    stop = asyncio.Event()
    ports: list[int] = []
    server = asyncio.ensure_future(
        run_server(storage, port=0, name="embedded", stop=stop, ready=ports.append)
    )
    try:
        await async_wait_until(lambda: ports or server.done(), what="run_server to listen")
        assert len(ports) == 1 and ports[0] > 0
        await storage.append(
            [TaskEvent(task_id="t", event_type="ENQUEUED", details={"queue": "q"})]
        )

        def seen() -> bool:
            got = scrape(ports[0])
            return value(got, "omniq_task_events_total", queue="q", event_type="ENQUEUED") == 1

        await async_wait_until(lambda: asyncio.to_thread(seen), what="the event on /metrics")
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
        import structlog

        structlog.reset_defaults()
