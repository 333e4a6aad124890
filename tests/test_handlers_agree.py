"""One workload, stored shuffled, gives the same numbers everywhere: PrometheusHandler,
OTelMetricsHandler, TracingHandler (one span per attempt) and the Summary behind ``stats``
and ``top``. Each output pairs on its own processor, so agreement is not by sharing."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Iterable
from typing import Any

import pytest
from _workloads import workload
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from omniq_observe._summary import Summary, nearest_rank
from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers import OTelMetricsHandler, PrometheusHandler, TracingHandler

# (queue, status) or (queue,) -> (count, sum); the workload's times are whole milliseconds,
# so sums are rounded to 0.1 ms (float sums in another order differ in the 6th decimal)
Totals = dict[tuple[str, ...], tuple[int, float]]


def totals(pairs: Iterable[tuple[tuple[str, ...], float]]) -> Totals:
    count: collections.Counter[tuple[str, ...]] = collections.Counter()
    total: collections.Counter[tuple[str, ...]] = collections.Counter()
    for key, seconds in pairs:
        count[key] += 1
        total[key] += seconds
    return {key: (count[key], round(total[key], 4)) for key in count}


class Outputs:
    """Every output of one stored workload."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reader = InMemoryMetricReader()
        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.handlers: dict[str, Any] = {
            "prometheus": PrometheusHandler(registry=self.registry),
            "otel": OTelMetricsHandler(MeterProvider(metric_readers=[self.reader])),
            "tracing": TracingHandler(tracer_provider, producer_spans=False),
        }
        self.summary = Summary(window=10**9)

    async def run(self, events: list[Any]) -> None:
        storage = MemoryBackend()
        await storage.append(events)
        for name, handler in self.handlers.items():
            processor = AsyncEventProcessor(storage, name, batch_size=50)
            processor.register_handler(handler)
            assert await processor.process_events_once() == len(events)
        self.summary = Summary(storage.task_history, window=10**9)
        await self.summary.add_all(events)
        self.summary.finish()

    def prometheus(self, family: str, *labels: str) -> Totals:
        count: dict[tuple[str, ...], int] = {}
        total: dict[tuple[str, ...], float] = {}
        for metric in self.registry.collect():
            for s in metric.samples:
                key = tuple(s.labels.get(label, "") for label in labels)
                if s.name == f"{family}_count" and s.value:
                    count[key] = int(s.value)
                elif s.name == f"{family}_sum" and s.value:
                    total[key] = round(s.value, 4)
        return {key: (n, total.get(key, 0.0)) for key, n in count.items()}

    def otel(self, name: str, *attributes: str) -> Totals:
        data = self.reader.get_metrics_data()
        assert data is not None
        out: Totals = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in (m for m in sm.metrics if m.name == name):
                    for p in metric.data.data_points:
                        attrs = dict(p.attributes or {})
                        key = tuple(str(attrs[a]) for a in attributes)
                        n, total = out.get(key, (0, 0.0))
                        out[key] = (n + p.count, total + p.sum)  # type: ignore[union-attr]
        return {key: (n, round(total, 4)) for key, (n, total) in out.items()}

    def spans(self) -> list[tuple[str, str, float]]:
        """Each attempt span's queue, status (``retried`` counts as ``failed``, as in the
        metrics) and duration."""
        out = []
        for span in self.exporter.get_finished_spans():
            attrs = span.attributes or {}
            status = str(attrs["omniq.task.status"])
            assert span.start_time is not None and span.end_time is not None
            seconds = (span.end_time - span.start_time) / 1e9
            queue = str(attrs["messaging.destination.name"])
            out.append((queue, "failed" if status == "retried" else status, seconds))
        return out


@pytest.fixture(scope="module")
def outputs() -> Outputs:
    rng = random.Random(12)
    events = workload(rng, 150)
    rng.shuffle(events)
    outputs = Outputs()
    asyncio.run(outputs.run(events))
    return outputs


def test_attempt_durations_agree(outputs: Outputs) -> None:
    prometheus = outputs.prometheus("omniq_task_duration_seconds", "queue", "status")
    assert len(prometheus) >= 9  # three queues, completed/failed/timeout/cancelled
    assert outputs.otel("messaging.process.duration", "messaging.destination.name",
                        "omniq.task.status") == prometheus
    spans = totals(((queue, status), seconds) for queue, status, seconds in outputs.spans())
    assert spans == prometheus
    stats = totals(
        ((figures.queue,), seconds)
        for figures in outputs.summary.queues() for seconds in figures.durations
    )
    by_queue = totals(((q,), s) for q, _status, s in outputs.spans())
    assert stats == by_queue


def test_queue_waits_agree(outputs: Outputs) -> None:
    prometheus = outputs.prometheus("omniq_task_queue_wait_seconds", "queue")
    assert len(prometheus) == 3
    assert outputs.otel("omniq.task.queue_wait.duration",
                        "messaging.destination.name") == prometheus
    stats = totals(
        ((figures.queue,), seconds)
        for figures in outputs.summary.queues() for seconds in figures.waits
    )
    assert stats == prometheus


def test_top_quantiles_are_those_of_the_attempt_spans(outputs: Outputs) -> None:
    summary = outputs.summary
    assert summary.newest is not None
    by_queue: dict[str, list[float]] = collections.defaultdict(list)
    for queue, _status, seconds in outputs.spans():
        by_queue[queue].append(round(seconds, 6))
    rows = summary.live(summary.newest)
    assert [row.queue for row in rows] == sorted(by_queue)
    for row in rows:
        ordered = sorted(by_queue[row.queue])
        got = (row.duration_p50, row.duration_p95)
        assert tuple(None if q is None else round(q, 6) for q in got) == (
            nearest_rank(ordered, 0.5), nearest_rank(ordered, 0.95)
        )
