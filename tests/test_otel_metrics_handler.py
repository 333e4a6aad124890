"""OTelMetricsHandler with the real SDK's InMemoryMetricReader: exact counts and sums."""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from omniq_observe.backend import MemoryBackend, SQLiteBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.handlers.otel_metrics import (
    DURATION_BUCKETS,
    QUEUE_WAIT_BUCKETS,
    OTelMetricsHandler,
)
from omniq_observe.models.event import TaskEvent

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
Key = frozenset[tuple[str, Any]]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ev(task: str, kind: str, seconds: float, **details: Any) -> TaskEvent:
    return TaskEvent(task_id=task, event_type=kind, timestamp=at(seconds), details=details)


class Metered:
    """A MeterProvider of this test only, read in memory."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def read(self) -> dict[str, Any]:
        """{metric name: (unit, {attributes: value or (count, sum, bounds)})}."""
        out: dict[str, Any] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    points: dict[Key, Any] = {}
                    for p in metric.data.data_points:
                        key = frozenset((p.attributes or {}).items())
                        if hasattr(p, "bucket_counts"):
                            points[key] = (p.count, round(p.sum, 9), tuple(p.explicit_bounds))
                        else:
                            points[key] = p.value
                    out[metric.name] = (metric.unit, points)
        return out


def attrs(queue: str = "emails", op: str = "process", **extra: Any) -> Key:
    return frozenset({"messaging.system": "omniq", "messaging.destination.name": queue,
                      "messaging.operation.name": op, **extra}.items())


@pytest.fixture
def metered() -> Metered:
    return Metered()


async def feed(handler: OTelMetricsHandler, events: list[TaskEvent]) -> None:
    for event in events:
        result = handler(event)
        if result is not None:
            await result


SCENARIO = [
    ev("a", "ENQUEUED", 0, queue_name="emails"),
    ev("a", "STARTED", 2, worker_id="w-1"),
    ev("a", "COMPLETED", 2.5),
    ev("b", "ENQUEUED", 1, queue_name="emails"),
    ev("b", "STARTED", 5),
    ev("b", "FAILED", 6.25, error="ValueError: bad"),
    ev("b", "RETRIED", 7, attempt=1),
    ev("b", "STARTED", 8),
    ev("b", "TIMEOUT", 38, timeout_seconds=30),
    ev("c", "ENQUEUED", 0, queue_name="reports"),
    ev("c", "STARTED", 0.5),
    ev("c", "CANCELLED", 0.75, reason="user"),
]


async def test_instruments_record_exact_values(metered: Metered) -> None:
    handler = OTelMetricsHandler(meter_provider=metered.provider)
    await feed(handler, SCENARIO)
    got = metered.read()
    D, W = DURATION_BUCKETS, QUEUE_WAIT_BUCKETS
    assert got["messaging.process.duration"] == ("s", {
        attrs(**{"omniq.task.status": "completed"}): (1, 0.5, D),
        attrs(**{"omniq.task.status": "failed", "error.type": "ValueError"}): (1, 1.25, D),
        attrs(**{"omniq.task.status": "timeout", "error.type": "timeout"}): (1, 30.0, D),
        attrs("reports", **{"omniq.task.status": "cancelled"}): (1, 0.25, D),
    })
    assert got["messaging.client.consumed.messages"] == ("{message}", {
        attrs(): 3, attrs("reports"): 1,
    })
    assert got["omniq.task.queue_wait.duration"] == ("s", {
        attrs(): (3, 2.0 + 4.0 + 1.0, W),  # a: 0->2, b: 1->5, b retried: 7->8
        attrs("reports"): (1, 0.5, W),
    })
    assert got["omniq.task.events"] == ("{event}", {
        attrs(op="send", **{"omniq.event.type": "ENQUEUED"}): 2,
        attrs(**{"omniq.event.type": "STARTED"}): 3,
        attrs(**{"omniq.event.type": "COMPLETED"}): 1,
        attrs(**{"omniq.event.type": "FAILED", "error.type": "ValueError"}): 1,
        attrs(**{"omniq.event.type": "RETRIED"}): 1,
        attrs(**{"omniq.event.type": "TIMEOUT", "error.type": "timeout"}): 1,
        attrs("reports", op="send", **{"omniq.event.type": "ENQUEUED"}): 1,
        attrs("reports", **{"omniq.event.type": "STARTED"}): 1,
        attrs("reports", **{"omniq.event.type": "CANCELLED"}): 1,
    })


async def test_duplicates_count_once(metered: Metered) -> None:
    handler = OTelMetricsHandler(metered.provider)
    await feed(handler, SCENARIO + SCENARIO)
    got = metered.read()
    assert sum(got["omniq.task.events"][1].values()) == len(SCENARIO)
    assert sum(c for c, _, _ in got["messaging.process.duration"][1].values()) == 4


async def test_restart_pairs_with_storage_history(metered: Metered, tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    async with SQLiteBackend(db) as storage:
        await storage.append([ev("a", "ENQUEUED", 0, queue_name="emails"), ev("a", "STARTED", 3)])
        before = AsyncEventProcessor(storage, "otel")
        before.register_handler(OTelMetricsHandler(Metered().provider))
        assert await before.process_events_once() == 2
    async with SQLiteBackend(db) as storage:
        await storage.append([ev("a", "COMPLETED", 4.5)])
        after = AsyncEventProcessor(storage, "otel")
        after.register_handler(OTelMetricsHandler(metered.provider))
        assert await after.process_events_once() == 1
    got = metered.read()
    assert got["messaging.process.duration"][1] == {
        attrs(**{"omniq.task.status": "completed"}): (1, 1.5, DURATION_BUCKETS)
    }


async def test_common_path_is_sync(metered: Metered) -> None:
    handler = OTelMetricsHandler(metered.provider)
    handler.attach(AsyncEventProcessor(MemoryBackend(), "p"))
    assert handler(ev("a", "ENQUEUED", 0, queue="q")) is None
    assert handler(ev("a", "STARTED", 1)) is None
    assert handler(ev("a", "COMPLETED", 2)) is None
    pending = handler(ev("z", "COMPLETED", 3))
    assert inspect.isawaitable(pending)
    await pending


def test_uses_the_global_provider_lazily_without_setting_it() -> None:
    before = metrics.get_meter_provider()
    OTelMetricsHandler()
    assert metrics.get_meter_provider() is before


def test_invalid_ttl_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"ttl.*-1") as info:
        OTelMetricsHandler(MeterProvider(), ttl=-1)
    assert info.value.setting == "ttl"


def prometheus_agreement_events() -> list[TaskEvent]:
    """Every event type, duplicates, an out-of-order pair, three queues (one unnamed)."""
    events = list(SCENARIO)
    events += [
        ev("d", "ENQUEUED", 10, queue="reports"),  # the other queue key
        ev("d", "STARTED", 11),
        ev("d", "RETRIED", 12.5, attempt=1),  # ends the open attempt
        ev("d", "STARTED", 13),
        ev("d", "FAILED", 14.75, error="KeyError: 'x'"),
        ev("e", "STARTED", 20),  # no ENQUEUED: the queue is unknown
        ev("e", "PROGRESS", 20.5, percent=50),  # a custom type
        ev("e", "COMPLETED", 21.125),
        ev("f", "ENQUEUED", 30),  # names no queue: "default"
        ev("f", "COMPLETED", 31.5),  # before its STARTED
        ev("f", "STARTED", 31),
    ]
    return events + events[:5] + events[-3:]  # and some delivered twice


async def test_counts_and_sums_equal_the_prometheus_handlers(
    metered: Metered, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry

    from omniq_observe.handlers.prometheus import PrometheusHandler

    registry = CollectorRegistry()
    async with SQLiteBackend(tmp_path / "e.db") as storage:
        events = prometheus_agreement_events()
        await storage.append(events)
        # Two processors, so each handler pairs on its own: agreement is not by sharing.
        prom = AsyncEventProcessor(storage, "prometheus")
        prom.register_handler(PrometheusHandler(registry=registry, prefix="omniq"))
        otel = AsyncEventProcessor(storage, "otel")
        otel.register_handler(OTelMetricsHandler(meter_provider=metered.provider))
        assert await prom.process_events_once() == len(events) == 31
        assert await otel.process_events_once() == 31

    prom_events: dict[tuple[str, str], float] = {}
    prom_hist: dict[str, dict[tuple[str, ...], list[float]]] = {"duration": {}, "wait": {}}
    for family in registry.collect():
        for s in family.samples:
            if s.name == "omniq_task_events_total" and s.value:
                prom_events[(s.labels["event_type"], s.labels["queue"])] = s.value
            for kind, name in (("duration", "omniq_task_duration_seconds"),
                               ("wait", "omniq_task_queue_wait_seconds")):
                key = (s.labels.get("queue", ""), s.labels.get("status", ""))
                if s.name == f"{name}_count" and s.value:
                    prom_hist[kind].setdefault(key, [0.0, 0.0])[0] = s.value
                elif s.name == f"{name}_sum" and s.value:
                    prom_hist[kind].setdefault(key, [0.0, 0.0])[1] = round(s.value, 9)

    got = metered.read()
    otel_events: dict[tuple[str, str], float] = {}
    for key, value in got["omniq.task.events"][1].items():
        a = dict(key)
        k = (a["omniq.event.type"], a["messaging.destination.name"])
        otel_events[k] = otel_events.get(k, 0) + value
    otel_hist: dict[str, dict[tuple[str, ...], list[float]]] = {"duration": {}, "wait": {}}
    for kind, name in (("duration", "messaging.process.duration"),
                       ("wait", "omniq.task.queue_wait.duration")):
        for key, (count, total, _) in got[name][1].items():
            a = dict(key)
            k = (a["messaging.destination.name"], a.get("omniq.task.status", ""))
            entry = otel_hist[kind].setdefault(k, [0.0, 0.0])
            entry[0] += count
            entry[1] = round(entry[1] + total, 9)

    assert otel_events == prom_events
    assert sum(prom_events.values()) == 23  # each distinct event once, PROGRESS too
    assert otel_hist == prom_hist
    assert prom_hist["duration"] == {
        ("emails", "completed"): [1, 0.5], ("emails", "failed"): [1, 1.25],
        ("emails", "timeout"): [1, 30.0], ("reports", "cancelled"): [1, 0.25],
        ("reports", "failed"): [2, 1.5 + 1.75], ("unknown", "completed"): [1, 1.125],
        ("default", "completed"): [1, 0.5],
    }
