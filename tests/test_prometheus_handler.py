"""PrometheusHandler on a real processor: exact values for every metric and pairing rule."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from omniq_observe.backend import MemoryBackend, SQLiteBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.handlers import PrometheusHandler
from omniq_observe.models.event import TaskEvent

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def ev(task: str, kind: str, at: float, **details: Any) -> TaskEvent:
    return TaskEvent(
        task_id=task, event_type=kind, timestamp=T0 + timedelta(seconds=at), details=details
    )


def samples(registry: CollectorRegistry) -> Samples:
    text = prometheus_client.generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def value(got: Samples, name: str, **labels: str) -> float | None:
    return got.get((name, frozenset(labels.items())))


class Rig:
    """A memory backend, a processor and a handler on a fresh registry."""

    def __init__(self, **options: Any) -> None:
        self.storage = MemoryBackend()
        self.registry = CollectorRegistry()
        self.handler = PrometheusHandler(registry=self.registry, **options)
        self.processor = AsyncEventProcessor(event_storage=self.storage, name="test")
        self.processor.register_handler(self.handler)

    async def run(self, *events: TaskEvent) -> Samples:
        await self.storage.append(list(events))
        await self.processor.process_events_once()
        return samples(self.registry)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.storage.close()


async def test_a_workload_gives_exact_counters_histograms_and_gauge(rig: Rig) -> None:
    got = await rig.run(
        ev("a", "ENQUEUED", 0, queue_name="emails"),
        ev("a", "STARTED", 0.5, worker_id="w1"),
        ev("a", "COMPLETED", 0.75),
        ev("b", "ENQUEUED", 0, queue_name="emails"),
        ev("b", "STARTED", 2),
        ev("b", "FAILED", 3, error="ValueError: bad input"),
        ev("b", "RETRIED", 4, attempt=2),
        ev("b", "STARTED", 4.25),
        ev("b", "TIMEOUT", 10.25, timeout_seconds=6),
        ev("c", "ENQUEUED", 1, queue="billing"),
        ev("c", "STARTED", 1.5),
        ev("d", "ENQUEUED", 1),
        ev("d", "CANCELLED", 2, reason="user"),
        ev("e", "ENQUEUED", 1, queue_name="emails"),
        ev("e", "STARTED", 1.1),
        ev("e", "FAILED", 1.2, error="x", error_type="SMTPError"),
        ev("f", "ENQUEUED", 1, queue_name="emails"),
        ev("f", "STARTED", 1.1),
        ev("f", "FAILED", 1.3),
    )
    assert value(got, "omniq_task_events_total", event_type="ENQUEUED", queue="emails") == 4
    assert value(got, "omniq_task_events_total", event_type="STARTED", queue="emails") == 5
    assert value(got, "omniq_task_events_total", event_type="FAILED", queue="emails") == 3
    assert value(got, "omniq_task_events_total", event_type="CANCELLED", queue="default") == 1
    assert value(got, "omniq_task_events_total", event_type="STARTED", queue="billing") == 1
    duration = "omniq_task_duration_seconds"
    assert value(got, f"{duration}_count", queue="emails", status="completed") == 1
    assert value(got, f"{duration}_sum", queue="emails", status="completed") == 0.25
    assert value(got, f"{duration}_count", queue="emails", status="failed") == 3
    assert value(got, f"{duration}_sum", queue="emails", status="failed") == pytest.approx(1.3)
    assert value(got, f"{duration}_count", queue="emails", status="timeout") == 1
    assert value(got, f"{duration}_sum", queue="emails", status="timeout") == 6.0
    assert value(got, f"{duration}_bucket", queue="emails", status="timeout", le="5.0") == 0
    assert value(got, f"{duration}_bucket", queue="emails", status="timeout", le="10.0") == 1
    wait = "omniq_task_queue_wait_seconds"
    assert value(got, f"{wait}_count", queue="emails") == 5
    assert value(got, f"{wait}_sum", queue="emails") == pytest.approx(0.5 + 2 + 0.25 + 0.1 + 0.1)
    assert value(got, f"{wait}_count", queue="billing") == 1
    assert value(got, "omniq_tasks_in_progress", queue="billing") == 1
    assert value(got, "omniq_tasks_in_progress", queue="emails") == 0
    failures = "omniq_task_failures_total"
    assert value(got, failures, queue="emails", error_type="ValueError") == 1
    assert value(got, failures, queue="emails", error_type="SMTPError") == 1
    assert value(got, failures, queue="emails", error_type="unknown") == 1
    assert value(got, "omniq_task_retries_total", queue="emails") == 1
    assert value(got, "omniq_observe_events_processed_total", processor="test") == 19
    assert value(got, "omniq_observe_processor_lag_seconds", processor="test") == 0
    assert not any("task_id" in dict(labels) for _, labels in got)


async def test_series_exist_at_zero_as_soon_as_a_queue_is_seen(rig: Rig) -> None:
    got = await rig.run(ev("a", "ENQUEUED", 0, queue_name="fresh"))
    for kind in ("STARTED", "COMPLETED", "FAILED", "RETRIED", "CANCELLED", "TIMEOUT"):
        assert value(got, "omniq_task_events_total", event_type=kind, queue="fresh") == 0
    for status in ("completed", "failed", "timeout", "cancelled"):
        assert value(got, "omniq_task_duration_seconds_count", queue="fresh", status=status) == 0
    assert value(got, "omniq_task_queue_wait_seconds_count", queue="fresh") == 0
    assert value(got, "omniq_tasks_in_progress", queue="fresh") == 0
    assert value(got, "omniq_task_retries_total", queue="fresh") == 0
    for reason in ("expired", "no_start", "clock_skew", "duplicate", "superseded"):
        assert value(got, "omniq_observe_unpaired_events_total", reason=reason) == 0
    assert value(got, "omniq_observe_label_overflow_total", label="queue") == 0
    assert value(got, "omniq_observe_handler_errors_total", handler="prometheus") == 0


async def test_custom_event_types_are_counted(rig: Rig) -> None:
    got = await rig.run(ev("a", "ENQUEUED", 0, queue_name="q"), ev("a", "progress", 1))
    assert value(got, "omniq_task_events_total", event_type="PROGRESS", queue="q") == 1


async def test_out_of_order_completed_before_started(rig: Rig) -> None:
    got = await rig.run(
        ev("a", "ENQUEUED", 0, queue_name="q"),
        ev("a", "COMPLETED", 3),
        ev("a", "STARTED", 1),
    )
    assert value(got, "omniq_task_duration_seconds_count", queue="q", status="completed") == 1
    assert value(got, "omniq_task_duration_seconds_sum", queue="q", status="completed") == 2.0
    assert value(got, "omniq_tasks_in_progress", queue="q") == 0


async def test_an_event_delivered_twice_counts_once_everywhere(rig: Rig) -> None:
    start = ev("a", "STARTED", 1, queue_name="q")
    end = ev("a", "COMPLETED", 2)
    got = await rig.run(start, start, end, end)
    assert value(got, "omniq_task_events_total", event_type="STARTED", queue="q") == 1
    assert value(got, "omniq_task_events_total", event_type="COMPLETED", queue="q") == 1
    assert value(got, "omniq_task_duration_seconds_count", queue="q", status="completed") == 1
    assert value(got, "omniq_tasks_in_progress", queue="q") == 0
    assert value(got, "omniq_observe_unpaired_events_total", reason="duplicate") == 2
    assert value(got, "omniq_observe_events_processed_total", processor="test") == 4


async def test_a_restart_between_started_and_completed_recovers_the_start(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with SQLiteBackend(path) as storage:
        first = AsyncEventProcessor(event_storage=storage, name="p")
        first.register_handler(PrometheusHandler(registry=CollectorRegistry()))
        await storage.append([ev("a", "ENQUEUED", 0, queue_name="q"), ev("a", "STARTED", 2)])
        assert await first.process_events_once() == 2
    async with SQLiteBackend(path) as storage:  # a new process: new handler, new state
        registry = CollectorRegistry()
        second = AsyncEventProcessor(event_storage=storage, name="p")
        second.register_handler(PrometheusHandler(registry=registry))
        await storage.append([ev("a", "COMPLETED", 7.5)])
        assert await second.process_events_once() == 1
        got = samples(registry)
    assert value(got, "omniq_task_duration_seconds_count", queue="q", status="completed") == 1
    assert value(got, "omniq_task_duration_seconds_sum", queue="q", status="completed") == 5.5
    assert value(got, "omniq_tasks_in_progress", queue="q") == 0  # never negative
    assert value(got, "omniq_task_events_total", event_type="COMPLETED", queue="q") == 1


async def test_retries_give_each_attempt_its_own_duration(rig: Rig) -> None:
    got = await rig.run(
        ev("a", "ENQUEUED", 0, queue_name="q"),
        ev("a", "STARTED", 1),
        ev("a", "FAILED", 2, error="IOError: x"),
        ev("a", "RETRIED", 3, attempt=2),
        ev("a", "STARTED", 5),
        ev("a", "RETRIED", 9, attempt=3),  # no terminal event: recorded as failed
        ev("a", "STARTED", 10),
        ev("a", "COMPLETED", 10.5),
    )
    assert value(got, "omniq_task_duration_seconds_count", queue="q", status="failed") == 2
    assert value(got, "omniq_task_duration_seconds_sum", queue="q", status="failed") == 5.0
    assert value(got, "omniq_task_duration_seconds_sum", queue="q", status="completed") == 0.5
    assert value(got, "omniq_task_queue_wait_seconds_count", queue="q") == 3
    assert value(got, "omniq_task_queue_wait_seconds_sum", queue="q") == 4.0
    assert value(got, "omniq_task_retries_total", queue="q") == 2
    assert value(got, "omniq_task_failures_total", queue="q", error_type="IOError") == 1
    assert value(got, "omniq_tasks_in_progress", queue="q") == 0


async def test_a_start_that_never_finishes_expires_after_the_ttl() -> None:
    r = Rig(ttl=60)
    await r.run(ev("stuck", "ENQUEUED", 0, queue_name="q"), ev("stuck", "STARTED", 1))
    assert value(samples(r.registry), "omniq_tasks_in_progress", queue="q") == 1
    later = [ev(f"t{i}", "ENQUEUED", 200, queue_name="other") for i in range(1100)]
    got = await r.run(*later)
    assert value(got, "omniq_tasks_in_progress", queue="q") == 0
    assert value(got, "omniq_observe_unpaired_events_total", reason="expired") == 1
    assert value(got, "omniq_task_duration_seconds_count", queue="q", status="completed") == 0


async def test_clock_skew_records_zero_and_counts_it(rig: Rig) -> None:
    got = await rig.run(ev("a", "STARTED", 5, queue_name="q"), ev("a", "COMPLETED", 4))
    assert value(got, "omniq_task_duration_seconds_count", queue="q", status="completed") == 1
    assert value(got, "omniq_task_duration_seconds_sum", queue="q", status="completed") == 0
    assert value(got, "omniq_observe_unpaired_events_total", reason="clock_skew") == 1


async def test_a_flood_of_queue_names_keeps_the_series_bounded() -> None:
    r = Rig(max_label_values=50)
    rng = random.Random(7)
    names = [f"q-{rng.getrandbits(64):016x}" for _ in range(100_000)]
    flood = (ev(f"t{i}", "ENQUEUED", i / 1000, queue_name=q) for i, q in enumerate(names))
    got = await r.run(*flood)
    queues = {dict(labels).get("queue") for _, labels in got} - {None}
    assert len(queues) == 51
    assert "__overflow__" in queues
    assert value(got, "omniq_observe_label_overflow_total", label="queue") == 100_000 - 50
    overflow = value(got, "omniq_task_events_total", event_type="ENQUEUED", queue="__overflow__")
    assert overflow == 100_000 - 50
    assert len(got) < 51 * 120 + 50


async def test_error_types_are_capped_too() -> None:
    r = Rig(max_label_values=3)
    got = await r.run(
        ev("s", "ENQUEUED", 0, queue_name="q"),
        *(ev("s", "FAILED", i + 1, error_type=f"E{i}") for i in range(6)),
    )
    assert value(got, "omniq_task_failures_total", queue="q", error_type="__overflow__") == 3
    assert value(got, "omniq_observe_label_overflow_total", label="error_type") == 3


def failing_tasks(queues: int, error_types: int) -> list[TaskEvent]:
    """One task per (queue q<i>, error type E<j>): ENQUEUED, STARTED 1.5 s, FAILED 2.75 s."""
    events: list[TaskEvent] = []
    for q in range(queues):
        for e in range(error_types):
            task = f"t{q}-{e}"
            events += [ev(task, "ENQUEUED", 0, queue_name=f"q{q}"), ev(task, "STARTED", 1.5),
                       ev(task, "FAILED", 2.75, error_type=f"E{e}")]
    return events


async def test_failure_series_are_capped_per_metric_at_10000_by_default() -> None:
    r = Rig()
    got = await r.run(*failing_tasks(101, 100))
    failures = {labels for name, labels in got if name == "omniq_task_failures_total"}
    assert len(failures) == 10_001
    overflow = value(got, "omniq_task_failures_total", queue="__overflow__",
                     error_type="__overflow__")
    assert overflow == 100
    assert value(got, "omniq_task_failures_total", queue="q99", error_type="E99") == 1
    assert value(got, "omniq_task_failures_total", queue="q100", error_type="E0") is None
    assert value(got, "omniq_observe_label_overflow_total", label="series:task_failures") == 100
    assert value(got, "omniq_observe_label_overflow_total", label="error_type") == 0


async def test_max_series_caps_queues_and_event_types_too() -> None:
    r = Rig(max_series=20)  # a queue takes 7 event series: two fit, the third does not
    got = await r.run(
        *(ev(f"t{q}", "ENQUEUED", 0, queue_name=q) for q in ("a", "b", "c")),
        *(ev("t-a", f"CUSTOM_{i}", 1, queue_name="a") for i in range(8)),
    )
    enqueued = {q: value(got, "omniq_task_events_total", event_type="ENQUEUED", queue=q)
                for q in ("a", "b", "c", "__overflow__")}
    assert enqueued == {"a": 1, "b": 1, "c": None, "__overflow__": 1}
    assert value(got, "omniq_task_events_total", event_type="CUSTOM_5", queue="a") == 1
    assert value(got, "omniq_task_events_total", event_type="CUSTOM_6", queue="a") is None
    assert value(got, "omniq_task_events_total", event_type="__overflow__",
                 queue="__overflow__") == 2
    assert value(got, "omniq_observe_label_overflow_total", label="series:task_events") == 3


async def test_handler_errors_and_static_labels_are_exported() -> None:
    storage = MemoryBackend()
    registry = CollectorRegistry()
    processor = AsyncEventProcessor(event_storage=storage, name="p", max_handler_attempts=2)
    processor.register_handler(PrometheusHandler(registry=registry, static_labels={"env": "ci"}))

    def broken(event: TaskEvent) -> None:
        raise RuntimeError("boom")

    processor.register_handler(broken, name="broken")
    await storage.append([ev("a", "ENQUEUED", 0, queue_name="q")])
    await processor.process_events_once()
    got = samples(registry)
    assert value(got, "omniq_observe_handler_errors_total", handler="broken", env="ci") == 2
    assert value(got, "omniq_task_events_total", event_type="ENQUEUED", queue="q", env="ci") == 1


async def test_the_common_path_is_sync_and_only_history_lookups_are_awaited() -> None:
    storage = MemoryBackend()
    handler = PrometheusHandler(registry=CollectorRegistry())
    AsyncEventProcessor(event_storage=storage).register_handler(handler)
    assert handler(ev("a", "ENQUEUED", 0, queue_name="q")) is None
    assert handler(ev("a", "STARTED", 1)) is None
    orphan = handler(ev("b", "COMPLETED", 1))  # its start may be in storage
    assert orphan is not None
    await orphan


def test_registry_none_uses_the_default_registry_and_close_unregisters() -> None:
    handler = PrometheusHandler(prefix="omniq_defaulttest")
    try:
        assert handler.registry is prometheus_client.REGISTRY
        with pytest.raises(ConfigurationError, match="omniq_defaulttest"):
            PrometheusHandler(prefix="omniq_defaulttest")
    finally:
        handler.close()
    PrometheusHandler(prefix="omniq_defaulttest").close()  # registrable again


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"prefix": "bad-prefix"}, "prefix"),
        ({"max_label_values": 0}, "max_label_values"),
        ({"max_series": 0}, "max_series"),
        ({"max_series": True}, "max_series"),
        ({"duration_buckets": [1, 0.5]}, "duration_buckets"),
        ({"queue_wait_buckets": []}, "queue_wait_buckets"),
        ({"static_labels": {"queue": "x"}}, "static_labels"),
        ({"ttl": 0}, "ttl"),
    ],
)
def test_bad_settings_name_the_setting(options: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        PrometheusHandler(registry=CollectorRegistry(), **options)
    assert info.value.setting == setting


@pytest.mark.parametrize("bad", [True, float("nan"), 0, -1])
@pytest.mark.parametrize("setting", ["max_label_values", "max_series"])
def test_bad_limits_are_refused_with_their_value(setting: str, bad: object) -> None:
    registry = CollectorRegistry()
    with pytest.raises(ConfigurationError) as info:
        PrometheusHandler(registry=registry, **{setting: bad})
    assert str(info.value) == f"{setting} must be a positive integer, got {bad!r}"
    assert (info.value.setting, info.value.value) == (setting, bad)
    assert list(registry.collect()) == []  # refused before registering anything


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import datetime, timedelta, timezone
    from omniq_observe.backend import MemoryBackend
    from omniq_observe.events import AsyncEventProcessor
    from omniq_observe.handlers import PrometheusHandler
    from omniq_observe.models.event import TaskEvent
    from prometheus_client import CollectorRegistry

    async def main(tasks: int) -> None:
        t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
        storage = MemoryBackend()
        processor = AsyncEventProcessor(event_storage=storage, name="mp")
        handler = PrometheusHandler(registry=CollectorRegistry())
        processor.register_handler(handler)
        events = []
        for i in range(tasks):
            events.append(TaskEvent(task_id=f"t{i}", event_type="ENQUEUED", timestamp=t0,
                                    details={"queue_name": "q"}))
            events.append(TaskEvent(task_id=f"t{i}", event_type="STARTED",
                                    timestamp=t0 + timedelta(seconds=1)))
        events.append(TaskEvent(task_id="t0", event_type="COMPLETED",
                                timestamp=t0 + timedelta(seconds=3)))
        await storage.append(events)
        await processor.process_events_once()
        handler.refresh()  # self-metrics of the last batch, without a scrape here

    asyncio.run(main(int(sys.argv[1])))
    """
)


def test_multiprocess_mode_merges_two_processes(tmp_path: Path) -> None:
    from prometheus_client import multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(n)], env=env) for n in (3, 5)
    ]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    got = samples(registry)
    assert value(got, "omniq_task_events_total", event_type="STARTED", queue="q") == 8
    assert value(got, "omniq_task_duration_seconds_count", queue="q", status="completed") == 2
    assert value(got, "omniq_task_duration_seconds_sum", queue="q", status="completed") == 4.0
    assert value(got, "omniq_tasks_in_progress", queue="q") == 6  # livesum: 2 + 4
    assert value(got, "omniq_observe_events_processed_total", processor="mp") == 6 + 1 + 10 + 1
    multiprocess.mark_process_dead(workers[0].pid, path=str(tmp_path))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    assert value(samples(registry), "omniq_tasks_in_progress", queue="q") == 4
