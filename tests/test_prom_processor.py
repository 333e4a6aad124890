"""The processor's self-metrics: read by a collector at each scrape, or copied into metrics
of their own (multiprocess mode); both give the same samples."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers import PrometheusHandler
from omniq_observe.handlers._prom_metrics import (
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_QUEUE_WAIT_BUCKETS,
    LabelCap,
    Metrics,
)
from omniq_observe.handlers._prom_processor import (
    ProcessorStatsCopier,
    ProcessorStatsReader,
    multiprocess_mode,
)
from omniq_observe.models.event import TaskEvent

_SELF = ("omniq_observe_events_processed_total", "omniq_observe_undecodable_events_total",
         "omniq_observe_handler_errors_total", "omniq_observe_processor_lag_seconds")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

def self_samples(registry: CollectorRegistry) -> Samples:
    text = prometheus_client.generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples if s.name in _SELF
    }

def events(n: int, start: int = 0) -> list[TaskEvent]:
    return [TaskEvent(task_id=f"t{i}", event_type="ENQUEUED", details={"queue_name": "q"})
            for i in range(start, start + n)]

def broken(event: TaskEvent) -> None:
    raise RuntimeError("boom")

def also_broken(event: TaskEvent) -> None:
    raise RuntimeError("boom")

class CopiedRig:
    """The copying path on a registry of its own, reading ``processor``'s stats, with room
    for ``handler_labels`` handler names."""

    def __init__(self, processor: AsyncEventProcessor, handler_labels: int) -> None:
        self.registry = CollectorRegistry()
        metrics = Metrics(self.registry, "omniq", DEFAULT_DURATION_BUCKETS,
                          DEFAULT_QUEUE_WAIT_BUCKETS, {"env": "ci"})
        self.refused = 0
        self.reader = ProcessorStatsReader(
            LabelCap("processor", 10, self._refuse).admit,
            LabelCap("handler", handler_labels, self._refuse).admit,
        )
        self.reader.watch(processor)
        copier = metrics.add_processor_metrics(self.reader, copy=True)
        assert isinstance(copier, ProcessorStatsCopier)
        self.copier = copier

    def _refuse(self) -> None:
        self.refused += 1

def processed(got: Samples, processor: str, **extra: str) -> float:
    return got[("omniq_observe_events_processed_total",
                frozenset({"processor": processor, **extra}.items()))]

def test_this_process_is_not_in_multiprocess_mode() -> None:
    assert multiprocess_mode() is False

async def test_the_collector_reads_the_stats_at_each_scrape() -> None:
    storage = MemoryBackend()
    registry = CollectorRegistry()
    processor = AsyncEventProcessor(storage, "p", max_handler_attempts=2)
    processor.register_handler(PrometheusHandler(registry=registry))
    processor.register_handler(broken, name="broken")
    await storage.append(events(3))
    await processor.process_events_once()
    got = self_samples(registry)
    assert self_samples(registry) == got  # a scrape changes nothing
    assert got == {
        ("omniq_observe_events_processed_total", frozenset({("processor", "p")})): 3,
        ("omniq_observe_undecodable_events_total", frozenset({("processor", "p")})): 0,
        ("omniq_observe_processor_lag_seconds", frozenset({("processor", "p")})): 0,
        ("omniq_observe_handler_errors_total", frozenset({("handler", "prometheus")})): 0,
        ("omniq_observe_handler_errors_total", frozenset({("handler", "broken")})): 6,
    }
    await storage.append(events(2, start=3))
    await processor.process_events_once()
    assert processed(self_samples(registry), "p") == 5

async def test_the_copier_adds_what_grew_and_caps_handler_names() -> None:
    storage = MemoryBackend()
    processor = AsyncEventProcessor(storage, "p", max_handler_attempts=1)
    processor.register_handler(broken, name="broken")
    processor.register_handler(also_broken, name="also_broken")
    rig = CopiedRig(processor, handler_labels=1)
    await storage.append(events(4))
    await processor.process_events_once()
    assert rig.copier.behind()
    rig.copier.copy()
    assert not rig.copier.behind()
    rig.copier.copy()  # nothing grew: nothing added twice
    got = self_samples(rig.registry)
    errors = {
        dict(labels)["handler"]: v for (name, labels), v in got.items()
        if name == "omniq_observe_handler_errors_total"
    }
    assert errors == {"broken": 4, "__overflow__": 4}
    assert rig.refused == 1  # also_broken, counted once
    assert processed(got, "p", env="ci") == 4
    await storage.append(events(3, start=4))
    await processor.process_events_once()
    assert rig.copier.behind()
    assert processed(self_samples(rig.registry), "p", env="ci") == 7  # collecting copies

async def test_the_copied_samples_equal_the_collected_ones() -> None:
    storage = MemoryBackend()
    registry = CollectorRegistry()
    processor = AsyncEventProcessor(storage, "p", max_handler_attempts=3)
    processor.register_handler(PrometheusHandler(registry=registry,
                                                 static_labels={"env": "ci"}))
    processor.register_handler(broken, name="broken")
    rig = CopiedRig(processor, handler_labels=1000)
    for batch in range(3):
        await storage.append(events(5, start=batch * 5))
        await processor.process_events_once()
        rig.copier.copy()
        collected = self_samples(registry)
        assert self_samples(rig.registry) == collected
        assert processed(collected, "p", env="ci") == 5 * (batch + 1)
