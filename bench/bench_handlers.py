"""Handler benchmarks: PrometheusHandler + StructlogHandler against hand-written code, and
the latency from ``log_event`` to ``/metrics`` with ``omniq-observe serve`` running.

* throughput: the same stored events (memory backend, 10 queues; tasks that complete,
  fail, retry) go through the same processor, once with ``PrometheusHandler`` and
  ``StructlogHandler`` (JSON renderer writing to a file), once with what a user would
  hand-write: prometheus_client ``labels().inc()`` / ``observe()``, dicts of enqueue and
  start times, and one structlog line per event with the same keys. Target: ratio 1.0,
  0.8 at least.
* latency: ``serve`` runs on a SQLite file; the bench logs one event with ``EventLogger``
  and polls ``/metrics`` until its counter moves. The row's "events/s" is 1 / p99 latency,
  so the target 5/s means p99 <= 200 ms; the p50 and p99 are printed on stderr.

Run: ``python bench/run.py --only handlers`` (or ``python bench/bench_handlers.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))

import structlog
from _harness import Bench
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from omniq_observe._semantics import error_type_of
from omniq_observe.backend import MemoryBackend, SQLiteBackend
from omniq_observe.events import AsyncEventProcessor, EventLogger
from omniq_observe.handlers import PrometheusHandler, StructlogHandler
from omniq_observe.models.event import TaskEvent

_TMP = Path(tempfile.mkdtemp(prefix="omniq-bench-handlers-"))
atexit.register(shutil.rmtree, _TMP, True)
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
_TERMINAL = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"})


def make_events(n: int) -> list[TaskEvent]:
    """About ``n`` events: per task ENQUEUED, STARTED, then COMPLETED (4 in 5) or
    FAILED, RETRIED, STARTED, COMPLETED."""
    events: list[TaskEvent] = []
    task = 0
    while len(events) < n:
        tid, queue, at = f"task-{task}", f"queue-{task % 10}", task * 0.01

        def add(kind: str, dt: float, tid: str = tid, at: float = at, **details: Any) -> None:
            events.append(TaskEvent(task_id=tid, event_type=kind,
                                    timestamp=T0 + timedelta(seconds=at + dt), details=details))

        add("ENQUEUED", 0, queue_name=queue)
        add("STARTED", 0.05, worker_id="w-1")
        if task % 5 == 4:
            add("FAILED", 0.2, error="ValueError: bad input", traceback="Traceback ...")
            add("RETRIED", 0.3, attempt=2, max_attempts=3)
            add("STARTED", 0.35, worker_id="w-2")
        add("COMPLETED", 0.5, result="ok")
        task += 1
    return events[:n]


def _configure_logging(out: TextIO) -> None:
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


class HandWritten:
    """What a user writes without omniq-observe's handlers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("hw_task_events", "", ["event_type", "queue"], registry=registry)
        self.duration = Histogram("hw_task_duration_seconds", "", ["queue", "status"],
                                  registry=registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1,
                                  0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
        self.wait = Histogram("hw_task_queue_wait_seconds", "", ["queue"], registry=registry,
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                                       600, 1800, 3600))
        self.in_progress = Gauge("hw_tasks_in_progress", "", ["queue"], registry=registry)
        self.failures = Counter("hw_task_failures", "", ["queue", "error_type"], registry=registry)
        self.retries = Counter("hw_task_retries", "", ["queue"], registry=registry)
        self.queues: dict[str, str] = {}
        self.enqueued: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.log = structlog.get_logger("bench")

    def __call__(self, event: TaskEvent) -> None:
        tid, kind, details = event.task_id, event.event_type, event.details
        ts = event.timestamp.timestamp()
        queue = self.queues.get(tid) or details.get("queue_name") or "default"
        self.events.labels(kind, queue).inc()
        fields: dict[str, Any] = {}
        if kind == "ENQUEUED" or kind == "RETRIED":
            self.queues[tid] = queue
            self.enqueued[tid] = ts
            if kind == "RETRIED":
                self.retries.labels(queue).inc()
        elif kind == "STARTED":
            enq = self.enqueued.pop(tid, None)
            if enq is not None:
                self.wait.labels(queue).observe(ts - enq)
            self.started[tid] = ts
            self.in_progress.labels(queue).inc()
        elif kind in _TERMINAL:
            start = self.started.pop(tid, None)
            if start is not None:
                fields["duration_s"] = ts - start
                self.duration.labels(queue, kind.lower()).observe(ts - start)
                self.in_progress.labels(queue).dec()
            if kind == "FAILED":
                fields["error"] = details.get("error")
                fields["error_type"] = error_type_of(details)
                self.failures.labels(queue, fields["error_type"]).inc()
            if kind == "COMPLETED":
                self.queues.pop(tid, None)
        level = "error" if kind == "FAILED" else "warning" if kind == "RETRIED" else "info"
        getattr(self.log, level)(
            f"task.{kind.lower()}", task_id=tid, event_id=event.event_id, queue=queue,
            worker_id=details.get("worker_id"), attempt=details.get("attempt"),
            event_timestamp=event.timestamp.isoformat(), **fields,
        )


def _process(n: int, handlers: str) -> float:
    events = make_events(n)

    async def go() -> float:
        storage = MemoryBackend()
        await storage.append(events)
        processor = AsyncEventProcessor(event_storage=storage, name="bench")
        registry = CollectorRegistry()
        with (_TMP / f"{handlers}.log").open("w") as out:
            _configure_logging(out)
            if handlers == "omniq":
                processor.register_handler(PrometheusHandler(registry=registry))
                processor.register_handler(StructlogHandler())
            else:
                processor.register_handler(HandWritten(registry))
            start = time.perf_counter()
            handled = await processor.process_events_once()
            elapsed = time.perf_counter() - start
        structlog.reset_defaults()
        assert handled == n, (handled, n)
        return elapsed

    return asyncio.run(go())


def handlers_run(n: int) -> float:
    return _process(n, "omniq")


def handwritten_run(n: int) -> float:
    return _process(n, "hand")


# -- latency ------------------------------------------------------------------------------
def _scrape_count(port: int, queue: str) -> float:
    needle = f'omniq_task_events_total{{event_type="ENQUEUED",queue="{queue}"}} '
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(needle):
                return float(line[len(needle):])
    return 0.0


def latency_run(samples: int) -> float:
    """Log ``samples`` events one by one; return samples x p99 seconds (rate = 1/p99)."""
    samples = max(20, min(samples, 200))
    db = _TMP / f"latency-{time.monotonic_ns()}.db"
    port = _free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "omniq_observe", "serve", "--storage", f"sqlite:///{db}",
         "--port", str(port), "--log-format", "json", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    storage = SQLiteBackend(db)
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _scrape_count(port, "lat")
                break
            except OSError:
                if time.monotonic() > deadline or serve.poll() is not None:
                    raise RuntimeError("serve did not start") from None
                time.sleep(0.05)
        with EventLogger(event_storage=storage) as logger:
            for i in range(samples):
                start = time.perf_counter()
                logger.log_event(TaskEvent(task_id=f"l{i}", event_type="ENQUEUED",
                                           details={"queue_name": "lat"}))
                while _scrape_count(port, "lat") < i + 1:
                    if time.perf_counter() - start > 10:
                        raise RuntimeError("event never showed up on /metrics")
                    time.sleep(0.002)
                latencies.append(time.perf_counter() - start)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=15)
        storage.close_blocking()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"  latency log_event -> /metrics: p50 {statistics.median(latencies) * 1000:.1f} ms,"
          f" p99 {p99 * 1000:.1f} ms over {len(latencies)} events", file=sys.stderr)
    return p99 * samples


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def benchmarks() -> list[Bench]:
    """The rows of the handlers table."""
    return [
        Bench("handlers: Prometheus+Structlog vs hand-written", 30_000, handlers_run,
              handwritten_run, "prometheus_client labels() + dicts + structlog line",
              target_ratio=0.8),
        Bench("handlers: serve latency log_event->/metrics (1/p99)", 100, latency_run,
              target_rate=5.0, repeats=3, note="events/s = 1/p99 seconds"),
    ]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    from _harness import run_bench

    for bench in benchmarks():
        result = run_bench(bench)
        print(f"{bench.name}: {result.rate:,.1f}/s baseline "
              f"{result.baseline_rate or 0:,.1f}/s ratio {result.ratio or 0:.2f}")
