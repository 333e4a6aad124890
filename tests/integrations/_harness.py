"""Shared parts of the real-worker integration tests.

Each test starts a real worker of its framework as a subprocess, runs a producer in
another subprocess (inside a span of a real TracerProvider), waits with a deadline until
every scripted task has its whole lifecycle in storage, and then checks:

* each task's event types, in event-time order;
* the samples PrometheusHandler derives from the stored events;
* that TracingHandler puts every task span in the producer span's trace.

Workers and producers find their settings in ``OMNIQ_IT_*`` environment variables.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from _helpers import REDIS_URL, require_server
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from omniq_observe.backend import from_url
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers import PrometheusHandler, TracingHandler
from omniq_observe.models.event import TaskEvent

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
STORAGES = ("sqlite", "redis")
DEADLINE = 60.0

# What the scripted tasks of every framework log (frameworks without an event say so).
OK = ["ENQUEUED", "STARTED", "COMPLETED"]
FAIL = ["ENQUEUED", "STARTED", "FAILED"]
RETRY = ["ENQUEUED", "STARTED", "FAILED", "RETRIED", "STARTED", "COMPLETED"]
TIMEOUT = ["ENQUEUED", "STARTED", "TIMEOUT"]
CANCEL = ["ENQUEUED", "STARTED", "CANCELLED"]
CANCEL_UNSTARTED = ["ENQUEUED", "CANCELLED"]


def require_redis() -> None:
    require_server("Redis", REDIS_HOST, REDIS_PORT)


@contextmanager
def storage_url(kind: str, tmp_path: Path, name: str) -> Iterator[str]:
    """A fresh storage URL: a SQLite file, or a Redis Streams prefix removed afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    require_redis()
    prefix = f"omniq_it_{name}_{os.urandom(6).hex()}"
    try:
        yield f"{REDIS_URL}?prefix={prefix}"
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def clear_redis_db(db: int, pattern: str) -> None:
    """Remove this test's broker keys (``pattern``) from Redis ``db``."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def child_env(**settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"OMNIQ_IT_{key.upper()}": value for key, value in settings.items()})
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    return env


@contextmanager
def worker(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a worker subprocess; stop it with SIGTERM (then SIGKILL) afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def produce(framework: str, env: dict[str, str]) -> dict[str, Any]:
    """Run ``_producer.py framework``; return what it printed (task ids, trace id)."""
    done = subprocess.run(
        [sys.executable, str(HERE / "_producer.py"), framework], env=env, cwd=ROOT,
        capture_output=True, timeout=DEADLINE,
    )
    if done.returncode != 0:
        pytest.fail(f"producer failed:\n{done.stderr.decode()[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def read_events(url: str) -> list[TaskEvent]:
    async def read() -> list[TaskEvent]:
        storage = from_url(url)
        try:
            return [s.event for s in await storage.read_after(None, 100_000)]
        finally:
            await storage.close()

    return asyncio.run(read())


def lifecycles(events: list[TaskEvent]) -> dict[str, list[str]]:
    """Event types per task, in order of event time."""
    by_task: dict[str, list[TaskEvent]] = {}
    for event in events:
        by_task.setdefault(event.task_id, []).append(event)
    return {
        task: [e.event_type for e in sorted(evs, key=lambda e: (e.timestamp, e.event_id))]
        for task, evs in by_task.items()
    }


def wait_for_lifecycles(
    url: str, expected: dict[str, list[str]], log: Path | None = None
) -> list[TaskEvent]:
    """Poll storage until each task has as many events as expected (deadline), then check."""
    deadline = time.monotonic() + DEADLINE
    while True:
        events = read_events(url)
        got = lifecycles(events)
        if all(len(got.get(task, [])) >= len(types) for task, types in expected.items()):
            break
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log is not None else ""
            pytest.fail(f"lifecycles incomplete after {DEADLINE}s: {got}\nworker log:\n{tail}")
        time.sleep(0.1)
    found = {task: got.get(task) for task in expected}
    assert found == expected, f"lifecycles differ:\n got {found}\nwant {expected}"
    return events


class Derived:
    """What PrometheusHandler and TracingHandler make of the stored events."""

    def __init__(self, url: str) -> None:
        self.registry = CollectorRegistry()
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        asyncio.run(self._process(url, provider))

    async def _process(self, url: str, provider: TracerProvider) -> None:
        storage = from_url(url)
        try:
            processor = AsyncEventProcessor(event_storage=storage, name="it-check")
            processor.register_handler(PrometheusHandler(registry=self.registry))
            processor.register_handler(TracingHandler(tracer_provider=provider))
            while await processor.process_events_once():
                pass
        finally:
            await storage.close()

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def task_span_trace_ids(self, task_ids: list[str]) -> dict[str, set[str]]:
        """The trace ids of the ``process`` spans of each task."""
        found: dict[str, set[str]] = {task: set() for task in task_ids}
        for span in self.exporter.get_finished_spans():
            task = (span.attributes or {}).get("messaging.message.id")
            if span.name.startswith("process ") and task in found:
                assert span.context is not None
                found[str(task)].add(format(span.context.trace_id, "032x"))
        return found


def attempts_by_status(lifecycles: Iterable[list[str]]) -> dict[str, int]:
    """How many attempts (a STARTED and the terminal event after it) end in each status.

    A RETRIED that ends an open attempt counts as failed (the README's duration rule).
    """
    ends = {"COMPLETED": "completed", "FAILED": "failed", "TIMEOUT": "timeout",
            "CANCELLED": "cancelled", "RETRIED": "failed"}
    counts: dict[str, int] = {}
    for types in lifecycles:
        started = False
        for event_type in types:
            if event_type == "STARTED":
                started = True
            elif event_type in ends and started:
                counts[ends[event_type]] = counts.get(ends[event_type], 0) + 1
                started = False
    return counts


def check_derived(
    url: str,
    queue: str,
    ids: dict[str, str],
    expected: dict[str, list[str]],
    trace_id: str,
) -> Derived:
    """Assert the Prometheus samples and the task spans' trace for the scripted tasks."""
    derived = Derived(url)
    counts: dict[str, int] = {}
    for types in expected.values():
        for event_type in types:
            counts[event_type] = counts.get(event_type, 0) + 1
    for event_type, count in counts.items():
        got = derived.sample("omniq_task_events_total", event_type=event_type, queue=queue)
        assert got == count, f"events_total{{event_type={event_type}}}: {got} != {count}"
    failed = counts.get("FAILED", 0)
    assert derived.sample("omniq_task_failures_total", queue=queue, error_type="ValueError") \
        == failed
    assert derived.sample("omniq_task_retries_total", queue=queue) == counts.get("RETRIED", 0)
    durations = attempts_by_status(expected.values())
    for status in ("completed", "failed", "timeout", "cancelled"):
        got = derived.sample("omniq_task_duration_seconds_count", queue=queue, status=status)
        want_count = durations.get(status, 0)
        assert got == want_count, f"duration count{{status={status}}}: {got} != {want_count}"
    started = [task for task in ids.values() if "STARTED" in expected[task]]
    spans = derived.task_span_trace_ids(started)
    want = {task: {trace_id} for task in started}
    assert spans == want, f"task span traces:\n got {spans}\nwant {want}"
    return derived


SCENARIOS = {"ok": OK, "fail": FAIL, "retry": RETRY, "timeout": TIMEOUT, "cancel": CANCEL}


def run_scenarios(
    framework: str,
    url: str,
    cmd: list[str],
    env: dict[str, str],
    log: Path,
    scenarios: dict[str, list[str]] = SCENARIOS,
    retry_eta: bool = True,
) -> dict[str, str]:
    """Start the worker, run the producer, check lifecycles, details, samples and traces.

    Returns the scripted tasks' ids (for the caller's clean-up).
    """
    queue = env["OMNIQ_IT_QUEUE"]
    with worker(cmd, env, log):
        result = produce(framework, env)
        ids: dict[str, str] = result["ids"]
        expected = {ids[name]: types for name, types in scenarios.items()}
        events = wait_for_lifecycles(url, expected, log)
    check_details(events, queue, ids, retry_eta)
    check_derived(url, queue, ids, expected, result["trace_id"])
    return ids


def check_details(
    events: list[TaskEvent], queue: str, ids: dict[str, str], retry_eta: bool
) -> None:
    """The details every integration fills: queue, task name, worker, error, eta."""
    for event in events:
        details = event.details
        assert details.get("worker_id", "").count(":") == 1, event
        if event.event_type == "ENQUEUED":
            assert details["queue_name"] == queue, event
            assert details.get("task_name"), event
        if event.event_type == "STARTED":
            assert isinstance(details.get("attempt"), int), event
        if event.task_id == ids["fail"] and event.event_type == "FAILED":
            assert details["error_type"] == "ValueError", event
            assert "hunter2" not in str(details), event
    retried = [e for e in events if e.task_id == ids["retry"] and e.event_type == "RETRIED"]
    assert len(retried) == 1
    eta = retried[0].details.get("eta")
    if retry_eta:  # a retry with a backoff: due after the first attempt began, and the
        # second attempt did not start before it was due
        starts = sorted(e.timestamp for e in events
                        if e.task_id == ids["retry"] and e.event_type == "STARTED")
        assert eta is not None and starts[0] < datetime.fromisoformat(eta) <= starts[1], (
            eta, starts)
    else:
        assert eta is None


def run_framework(
    tmp_path: Path,
    storage: str,
    framework: str,
    broker: str,
    worker_cmd: Callable[[str], list[str]],
    scenarios: dict[str, list[str]] = SCENARIOS,
    retry_eta: bool = True,
) -> None:
    """One real-worker test: a fresh queue and storage, the scenarios, then clean-up.

    ``broker`` is a Redis URL (its db is this framework's own) or an AMQP URL.
    """
    queue = f"omniq-it-{framework}-{os.urandom(4).hex()}"
    ids: dict[str, str] = {}
    with storage_url(storage, tmp_path, framework) as url:
        env = child_env(storage=url, broker=broker, queue=queue)
        try:
            ids = run_scenarios(framework, url, worker_cmd(queue), env,
                                tmp_path / "worker.log", scenarios, retry_eta)
        finally:
            if broker.startswith("redis"):
                db = int(broker.rsplit("/", 1)[1])
                for pattern in [f"*{queue}*", *(f"*{task}*" for task in ids.values())]:
                    clear_redis_db(db, pattern)
            else:
                delete_amqp_queue(broker, queue)


def delete_amqp_queue(broker: str, queue: str) -> None:
    """Remove this test's (durable) queue from RabbitMQ."""
    from kombu import Connection

    with Connection(broker) as connection:
        connection.default_channel.queue_delete(queue)
