"""Handler benchmarks: PrometheusHandler + StructlogHandler against hand-written code, and
the latency from ``log_event`` to ``/metrics`` with ``omniq-observe serve`` running.

* throughput: the same stored events (memory backend, 10 queues; tasks that complete,
  fail, retry; each event with a ``traceparent``) go through the same processor setup,
  once with ``PrometheusHandler`` and ``StructlogHandler`` (JSON renderer writing to a
  file), once with what a user would hand-write for the same output: prometheus_client
  ``labels().inc()`` / ``observe()`` for the same six task metrics, a dict of per-task
  state, and one structlog line per event with the same keys. After every baseline run
  (untimed) the bench checks that both sides wrote the same lines (but the logging
  time) and the same metric samples. Target: ratio 1.0, 0.8 at least.
* latency: ``serve`` runs on a SQLite file; the bench logs one event with ``EventLogger``
  and polls ``/metrics`` until its counter moves. The row's "events/s" is 1 / p99 latency,
  so the target 5/s means p99 <= 200 ms; the p50 and p99 are printed on stderr.

Run: ``python bench/run.py --only handlers`` (or ``python bench/bench_handlers.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import json
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

from omniq_observe.backend import MemoryBackend, SQLiteBackend
from omniq_observe.events import AsyncEventProcessor, EventLogger
from omniq_observe.handlers import PrometheusHandler, StructlogHandler
from omniq_observe.handlers.prometheus import (
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_QUEUE_WAIT_BUCKETS,
)
from omniq_observe.models.event import TaskEvent

_TMP = Path(tempfile.mkdtemp(prefix="omniq-bench-handlers-"))
atexit.register(shutil.rmtree, _TMP, True)
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
_TERMINAL = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"})


_EVENTS: dict[int, list[TaskEvent]] = {}


def make_events(n: int) -> list[TaskEvent]:
    """About ``n`` events: per task ENQUEUED, STARTED, then COMPLETED (4 in 5) or
    FAILED, RETRIED, STARTED, COMPLETED; each carries its producer's ``traceparent``, as
    ``AsyncEventLogger`` stores it under a span. Made once per ``n``: every repeat of both
    sides processes the very same events."""
    cached = _EVENTS.get(n)
    if cached is not None:
        return cached
    events: list[TaskEvent] = []
    task = 0
    while len(events) < n:
        tid, queue, at = f"task-{task}", f"queue-{task % 10}", task * 0.01
        context = {"traceparent": f"00-{task:032x}-{task * 7 + 1:016x}-01"}

        def add(kind: str, dt: float, tid: str = tid, at: float = at,
                context: dict[str, str] = context, **details: Any) -> None:
            events.append(TaskEvent(task_id=tid, event_type=kind,
                                    timestamp=T0 + timedelta(seconds=at + dt), details=details,
                                    trace_context=context))

        add("ENQUEUED", 0, queue_name=queue)
        add("STARTED", 0.05, worker_id="w-1")
        if task % 5 == 4:
            add("FAILED", 0.2, error="ValueError: bad input", traceback="Traceback ...")
            add("RETRIED", 0.3, attempt=2, max_attempts=3)
            add("STARTED", 0.35, worker_id="w-2")
        add("COMPLETED", 0.5, result="ok")
        task += 1
    _EVENTS[n] = events = events[:n]
    return events


def _configure_logging(out: TextIO) -> None:
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


_LEVELS = {"FAILED": "error", "TIMEOUT": "error", "RETRIED": "warning", "CANCELLED": "warning"}
_NOT_DETAILS = frozenset(
    {"worker_id", "attempt", "error", "error_type", "traceback", "queue_name", "queue"}
)


class HandWritten:
    """What a user writes without omniq-observe's handlers, for the same output: the same
    six metric families and the same log line keys (checked after every run), in the most
    direct way: ``labels()`` per update, one dict of per-task state, one structlog call.

    Not done here (the handlers do it): label-value caps, self-metrics, duplicate and
    out-of-order events, recovery after a restart, expiry, redaction, truncation.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("omniq_task_events", "", ["event_type", "queue"],
                              registry=registry)
        self.duration = Histogram("omniq_task_duration_seconds", "", ["queue", "status"],
                                  registry=registry, buckets=DEFAULT_DURATION_BUCKETS)
        self.wait = Histogram("omniq_task_queue_wait_seconds", "", ["queue"],
                              registry=registry, buckets=DEFAULT_QUEUE_WAIT_BUCKETS)
        self.in_progress = Gauge("omniq_tasks_in_progress", "", ["queue"], registry=registry)
        self.failures = Counter("omniq_task_failures", "", ["queue", "error_type"],
                                registry=registry)
        self.retries = Counter("omniq_task_retries", "", ["queue"], registry=registry)
        # task id -> [queue, enqueued at, started at, worker, attempt]
        self.tasks: dict[str, list[Any]] = {}
        self.log = structlog.get_logger("bench")

    def __call__(self, event: TaskEvent) -> None:
        tid, kind, details = event.task_id, event.event_type, event.details
        ts = event.timestamp.timestamp()
        state = self.tasks.get(tid)
        if state is None:
            queue = details.get("queue_name") or details.get("queue") or (
                "default" if kind == "ENQUEUED" else "unknown")
            state = self.tasks[tid] = [queue, None, None, None, 0]
        queue = state[0]
        self.events.labels(kind, queue).inc()
        line: dict[str, Any] = {"task_id": tid, "event_id": event.event_id, "queue": queue}
        worker = details.get("worker_id")
        attempt = details.get("attempt")
        if kind == "ENQUEUED" or kind == "RETRIED":
            state[1] = ts
            if kind == "RETRIED":
                self.retries.labels(queue).inc()
        elif kind == "STARTED":
            if state[1] is not None:
                self.wait.labels(queue).observe(ts - state[1])
                state[1] = None
            state[2], state[3] = ts, worker
            state[4] = attempt = attempt or state[4] + 1
            self.in_progress.labels(queue).inc()
        elif kind in _TERMINAL:
            if state[2] is not None:
                duration = max(0.0, ts - state[2])
                line["duration_s"] = round(duration, 6)
                self.duration.labels(queue, kind.lower()).observe(duration)
                self.in_progress.labels(queue).dec()
                state[2] = None
                worker = worker or state[3]
                attempt = attempt or state[4]
            if kind == "FAILED":
                error = details.get("error")
                error_type = details.get("error_type") or str(error).split(":", 1)[0]
                self.failures.labels(queue, error_type).inc()
                line["error"], line["error_type"] = error, error_type
            if kind == "COMPLETED" or kind == "CANCELLED":
                del self.tasks[tid]
        if worker is not None:
            line["worker_id"] = worker
        if attempt is not None:
            line["attempt"] = attempt
        if "traceback" in details:
            line["traceback"] = details["traceback"]
        traceparent = event.trace_context.get("traceparent")
        if traceparent:
            _, line["trace_id"], line["span_id"], _ = traceparent.split("-")
        line["event_timestamp"] = event.timestamp.isoformat()
        rest = {k: v for k, v in details.items() if k not in _NOT_DETAILS}
        if rest:
            line["details"] = rest
        getattr(self.log, _LEVELS.get(kind, "info"))(f"task.{kind.lower()}", **line)


_OUTPUT: dict[str, tuple[CollectorRegistry, Path]] = {}  # the last run of each side


def _process(n: int, handlers: str) -> float:
    events = make_events(n)

    async def go() -> float:
        storage = MemoryBackend()
        await storage.append(events)
        processor = AsyncEventProcessor(event_storage=storage, name="bench")
        registry = CollectorRegistry()
        path = _TMP / f"{handlers}.log"
        with path.open("w") as out:
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
        _OUTPUT[handlers] = (registry, path)
        return elapsed

    return asyncio.run(go())


_COMPARED = ("omniq_task_events", "omniq_task_duration_seconds",
             "omniq_task_queue_wait_seconds", "omniq_tasks_in_progress",
             "omniq_task_failures", "omniq_task_retries")


def _samples(registry: CollectorRegistry) -> set[tuple[str, tuple[Any, ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in registry.collect() if family.name in _COMPARED
        for s in family.samples if s.value != 0 and not s.name.endswith("_created")
    }


def _lines(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        lines = [json.loads(line) for line in f]
    for line in lines:
        del line["timestamp"]  # the time of logging
    return lines


def check_same_output() -> None:
    """The last runs of both sides wrote the same lines and the same metric samples."""
    (ours, our_log), (theirs, their_log) = _OUTPUT["omniq"], _OUTPUT["hand"]
    assert _lines(our_log) == _lines(their_log), "the log lines differ"
    assert _samples(ours) == _samples(theirs), "the metrics differ"


def handlers_run(n: int) -> float:
    return _process(n, "omniq")


def handwritten_run(n: int) -> float:
    elapsed = _process(n, "hand")
    check_same_output()  # untimed: the baseline produced what the handlers produced
    return elapsed


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
              target_ratio=0.8, repeats=7),
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
