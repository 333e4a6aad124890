"""Tracing benchmarks: TracingHandler and OTelMetricsHandler versus hand-written OTel code.

Workload: tasks of three events each (ENQUEUED with a stored W3C context, STARTED,
COMPLETED), made before the clock starts. Both sides use the same TracerProvider, with a
SimpleSpanProcessor and an InMemorySpanExporter, so both pay the same SDK costs.

* ``TracingHandler``: the handler (attached to a processor, so storage history is on)
  called on every event, as the processor calls it.
* baseline: what a user would hand-write with the same SDK: remember each task's stored
  context and start time in dicts, and on COMPLETED extract the context with the W3C
  propagator, ``tracer.start_span(start_time=...)`` with the same attributes, and
  ``span.end(end_time=...)``.
* the same, with the pairing shared with a PrometheusHandler registered first (as on a
  processor running both): only the TracingHandler calls are timed, one by one, and so
  is each event's part of the hand-written code.
* ``OTelMetricsHandler`` versus hand-written ``histogram.record``/``counter.add`` calls
  with the same attributes, on a MeterProvider with an InMemoryMetricReader.

Before the rows run, an untimed check makes sure both sides produce the same spans.

Run: ``python bench/run.py --only tracing`` (or ``python bench/bench_tracing.py``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Bench
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import (
    TraceContextTextMapPropagator,
)
from prometheus_client import CollectorRegistry

from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers.otel_metrics import (
    DURATION_BUCKETS,
    QUEUE_WAIT_BUCKETS,
    OTelMetricsHandler,
)
from omniq_observe.handlers.prometheus import PrometheusHandler
from omniq_observe.handlers.tracing import TracingHandler
from omniq_observe.models.event import TaskEvent

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))  # both sides pay the same SDK
_propagator = TraceContextTextMapPropagator()


def make_events(n: int) -> list[TaskEvent]:
    """``n`` events, three per task, each task enqueued from a request span."""
    events: list[TaskEvent] = []
    for i in range(n // 3 + 1):
        task = f"task-{i}"
        parent = f"00-{i + 1:032x}-{i + 1:016x}-01"
        t = T0 + timedelta(milliseconds=i)
        events += [
            TaskEvent(task_id=task, event_type="ENQUEUED", timestamp=t,
                      details={"queue_name": "emails"}, trace_context={"traceparent": parent}),
            TaskEvent(task_id=task, event_type="STARTED", timestamp=t + timedelta(microseconds=50),
                      details={"worker_id": "w-1", "attempt": 1}),
            TaskEvent(task_id=task, event_type="COMPLETED",
                      timestamp=t + timedelta(microseconds=900), details={"result": "ok"}),
        ]
    return events[:n]


def tracing_run(n: int) -> float:
    events = make_events(n)
    handler = TracingHandler(tracer_provider=_provider, producer_spans=False)
    handler.attach(AsyncEventProcessor(MemoryBackend(), "bench"))
    _exporter.clear()
    begin = time.perf_counter()
    for event in events:
        if handler(event) is not None:
            raise AssertionError("the common path must stay sync")
    return time.perf_counter() - begin


def tracing_shared_run(n: int) -> float:
    """Only the TracingHandler calls, timed one by one, next to a PrometheusHandler that
    registered first and so pays for the shared pairing (as in a processor with both)."""
    events = make_events(n)
    processor = AsyncEventProcessor(MemoryBackend(), "bench")
    prometheus = PrometheusHandler(registry=CollectorRegistry())
    prometheus.attach(processor)
    handler = TracingHandler(tracer_provider=_provider, producer_spans=False)
    handler.attach(processor)
    clock = time.perf_counter
    _exporter.clear()
    spent = 0.0
    for event in events:
        prometheus(event)
        begin = clock()
        handler(event)
        spent += clock() - begin
    return spent


def tracing_baseline_timed_per_event(n: int) -> float:
    """The hand-written code, each event's part timed one by one like the row above."""
    return tracing_baseline(n, per_event=True)


def tracing_baseline(n: int, per_event: bool = False) -> float:
    events = make_events(n)
    tracer = _provider.get_tracer("hand-written")
    contexts: dict[str, tuple[dict[str, str], str]] = {}
    starts: dict[str, tuple[int, str | None, int]] = {}
    clock = time.perf_counter
    _exporter.clear()
    spent = 0.0
    begin = clock()
    for event in events:
        if per_event:
            begin = clock()
        kind = event.event_type
        if kind == "ENQUEUED":
            contexts[event.task_id] = (event.trace_context, event.details["queue_name"])
        elif kind == "STARTED":
            d = event.details
            starts[event.task_id] = (event.timestamp_ns, d.get("worker_id"), d.get("attempt", 1))
        elif kind == "COMPLETED":
            carrier, queue = contexts.pop(event.task_id)
            start, worker, attempt = starts.pop(event.task_id)
            span = tracer.start_span(
                f"process {queue}",
                context=_propagator.extract(carrier),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "omniq",
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": queue,
                    "messaging.message.id": event.task_id,
                    "omniq.worker.id": worker or "",
                    "omniq.task.attempt": attempt,
                    "omniq.task.status": "completed",
                },
                start_time=start,
            )
            span.end(end_time=event.timestamp_ns)
        if per_event:
            spent += clock() - begin
    return spent if per_event else clock() - begin


def metrics_run(n: int) -> float:
    events = make_events(n)
    handler = OTelMetricsHandler(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    handler.attach(AsyncEventProcessor(MemoryBackend(), "bench"))
    begin = time.perf_counter()
    for event in events:
        if handler(event) is not None:
            raise AssertionError("the common path must stay sync")
    return time.perf_counter() - begin


def metrics_baseline(n: int) -> float:
    events = make_events(n)
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("hand-written")
    duration = meter.create_histogram("messaging.process.duration", "s",
                                      explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
    consumed = meter.create_counter("messaging.client.consumed.messages", "{message}")
    wait = meter.create_histogram("omniq.task.queue_wait.duration", "s",
                                  explicit_bucket_boundaries_advisory=QUEUE_WAIT_BUCKETS)
    counted = meter.create_counter("omniq.task.events", "{event}")
    base = {"messaging.system": "omniq", "messaging.operation.name": "process",
            "messaging.destination.name": "emails"}
    by_type = {k: {**base, "omniq.event.type": k} for k in ("ENQUEUED", "STARTED", "COMPLETED")}
    by_type["ENQUEUED"]["messaging.operation.name"] = "send"
    done = {**base, "omniq.task.status": "completed"}
    enqueued: dict[str, float] = {}
    started: dict[str, float] = {}
    begin = time.perf_counter()
    for event in events:
        kind = event.event_type
        ts = event.timestamp.timestamp()
        counted.add(1, by_type[kind])
        if kind == "ENQUEUED":
            enqueued[event.task_id] = ts
        elif kind == "STARTED":
            consumed.add(1, base)
            wait.record(ts - enqueued.pop(event.task_id), base)
            started[event.task_id] = ts
        elif kind == "COMPLETED":
            duration.record(ts - started.pop(event.task_id), done)
    return time.perf_counter() - begin


def _spans_of(run: Callable[[int], float], n: int) -> list[tuple[Any, ...]]:
    run(n)
    return sorted((
        (span.name, span.kind, dict(span.attributes or {}),
         span.parent.trace_id if span.parent else None,
         span.parent.span_id if span.parent else None,
         span.status.status_code, span.start_time, span.end_time)
        for span in _exporter.get_finished_spans()
    ), key=lambda span: (span[6], span[4] or 0))


def check_same_spans(n: int = 300) -> None:
    """Untimed: the handler and the hand-written code make the same spans (names, kinds,
    attributes, parents, status, exact times), so the ratio compares equal work."""
    handler, hand_written = _spans_of(tracing_run, n), _spans_of(tracing_baseline, n)
    if handler != hand_written or len(handler) != n // 3:
        msg = f"the handler and the baseline made different spans: {handler[:1]} vs " \
              f"{hand_written[:1]}"
        raise AssertionError(msg)


def benchmarks() -> list[Bench]:
    """The rows of the tracing table."""
    check_same_spans()
    return [
        Bench("tracing: TracingHandler per event", 60_000, tracing_run, tracing_baseline,
              "hand-written start_span/end(end_time=)", target_ratio=0.8, repeats=7),
        Bench("tracing: TracingHandler per event, pairing shared with Prometheus", 60_000,
              tracing_shared_run, tracing_baseline_timed_per_event,
              "hand-written, each event timed alike", repeats=7,
              note="what TracingHandler adds in a processor that also runs PrometheusHandler"),
        Bench("tracing: OTelMetricsHandler per event", 60_000, metrics_run, metrics_baseline,
              "hand-written counter.add/histogram.record", repeats=7),
    ]


if __name__ == "__main__":
    from _harness import run_bench

    for bench in benchmarks():
        result = run_bench(bench)
        ratio = "-" if result.ratio is None else f"{result.ratio:.2f}"
        base = "-" if result.baseline_rate is None else f"{result.baseline_rate:,.0f}"
        print(f"{bench.name}: {result.rate:,.0f}/s  baseline {base}/s  ratio {ratio}")
