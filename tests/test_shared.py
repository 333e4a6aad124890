"""SharedPairing: one pairing per processor, and the handler alone on it taking a short cut."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.handlers import PrometheusHandler, StructlogHandler
from omniq_observe.handlers.otel_metrics import OTelMetricsHandler
from omniq_observe.handlers.tracing import TracingHandler
from omniq_observe.models.event import TaskEvent
from omniq_observe.pairing._shared import shared_pairing

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def ev(task: str, kind: str, at: float, **details: Any) -> TaskEvent:
    return TaskEvent(
        task_id=task, event_type=kind, timestamp=T0 + timedelta(seconds=at), details=details
    )


class Processor:
    """Just enough of a processor: a storage and the pairings it owns."""

    event_storage = None

    def __init__(self) -> None:
        self.pairings: dict[Any, Any] = {}


def test_handlers_of_one_processor_share_one_pairing_per_ttl() -> None:
    processor = Processor()
    first = shared_pairing(processor, 60.0, "a")
    assert shared_pairing(processor, 60.0, "b") is first
    assert shared_pairing(processor, 30.0, "c") is not first
    assert shared_pairing(Processor(), 60.0, "a") is not first
    assert shared_pairing(processor, 60.0, "d", reorder_window=0.0) is not first
    assert list(processor.pairings) == [(60.0, 10.0), (30.0, 10.0), (60.0, 0.0)]


def test_the_processor_owns_the_pairings_its_handlers_share() -> None:
    processor = AsyncEventProcessor(MemoryBackend(), "owner")
    prometheus = PrometheusHandler(registry=CollectorRegistry())
    tracing = TracingHandler(TracerProvider())
    processor.register_handler(prometheus)
    processor.register_handler(tracing)
    (shared,) = processor.pairings.values()
    assert prometheus.pairing is tracing.pairing is shared.pairing
    assert shared.handlers == [prometheus, tracing]


def test_a_handler_joining_mid_event_gets_the_event_the_sole_handler_took() -> None:
    """The handler alone on the pairing took an observation without the bookkeeping; a
    second handler joins and sees the same event: it gets that observation, once, and the
    first handler seeing the event again pairs it anew (a duplicate), as when shared."""
    processor = Processor()
    shared = shared_pairing(processor, 60.0, "a")
    event = ev("t", "ENQUEUED", 0, queue_name="q")
    obs = shared.try_observe(event, "a")
    assert obs is not None and not obs.duplicate
    assert shared_pairing(processor, 60.0, "b") is shared
    assert shared.try_observe(event, "b") is obs
    again = shared.try_observe(event, "a")
    assert again is not None and again.duplicate


async def test_tracing_alone_then_with_prometheus_counts_every_event_once() -> None:
    """A TracingHandler alone on a processor takes the short cut; a PrometheusHandler
    registered later shares the pairing and counts the events after it, exactly."""
    storage = MemoryBackend()
    processor = AsyncEventProcessor(event_storage=storage, name="p")
    tracing = TracingHandler(tracer_provider=TracerProvider(), producer_spans=False)
    processor.register_handler(tracing)
    await storage.append([ev("a", "ENQUEUED", 0, queue_name="q"), ev("a", "STARTED", 1)])
    await processor.process_events_once()
    registry = CollectorRegistry()
    processor.register_handler(PrometheusHandler(registry=registry))
    await storage.append([ev("a", "COMPLETED", 2), ev("b", "ENQUEUED", 3, queue_name="q")])
    await processor.process_events_once()
    completed = {"event_type": "COMPLETED", "queue": "q"}
    assert registry.get_sample_value("omniq_task_events_total", completed) == 1
    duration = {"queue": "q", "status": "completed"}
    assert registry.get_sample_value("omniq_task_duration_seconds_sum", duration) == 1.0
    duplicates = {"reason": "duplicate"}
    assert registry.get_sample_value("omniq_observe_unpaired_events_total", duplicates) == 0
    assert (tracing.stats.spans, tracing.stats.duplicates) == (1, 0)


_POSITIVE, _WINDOW = "a positive number of seconds", "a finite number of seconds >= 0"


@pytest.mark.parametrize(("setting", "bad", "wanted"), [
    *[("ttl", bad, _POSITIVE) for bad in (-1, 0, True, "60", float("nan"))],
    *[("reorder_window", bad, _WINDOW) for bad in (-1, True, "1", float("nan"), math.inf)],
])
@pytest.mark.parametrize("make", [
    lambda **setting: PrometheusHandler(registry=CollectorRegistry(), **setting),
    lambda **setting: StructlogHandler(**setting),
    lambda **setting: TracingHandler(tracer_provider=TracerProvider(), **setting),
    lambda **setting: OTelMetricsHandler(MeterProvider(), **setting),
], ids=["prometheus", "structlog", "tracing", "otel_metrics"])
def test_every_pairing_handler_refuses_a_bad_setting_alike(
    make: Any, setting: str, bad: object, wanted: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        make(**{setting: bad})
    assert str(info.value) == f"{setting} must be {wanted}, got {bad!r}"
    assert info.value.setting == setting and info.value.value is bad


def test_a_pairing_handler_takes_an_infinite_ttl_and_no_reorder_window() -> None:
    handler = StructlogHandler(ttl=math.inf, reorder_window=0)
    assert (handler.ttl, handler.reorder_window) == (math.inf, 0.0)
    assert (handler.pairing.ttl, handler.pairing.reorder_window) == (math.inf, 0.0)
