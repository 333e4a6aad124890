"""Exact numbers whatever the arrival order: random workloads stored in a random order
(with and without a processor restart), events delayed within and beyond the reorder
window, and the TracingHandler's spans on a shuffled workload."""

from __future__ import annotations

import asyncio
import collections
import random
from typing import Any

from _workloads import pairing_samples, reference, workload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from omniq_observe.backend import MemoryBackend, SQLiteBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers import PrometheusHandler, TracingHandler
from omniq_observe.models.event import TaskEvent
from omniq_observe.pairing import Observation, TaskPairing

_SETTINGS = settings(max_examples=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


async def _process(storage: Any, events: list[TaskEvent], **options: Any) -> CollectorRegistry:
    await storage.append(events)
    registry = CollectorRegistry()
    processor = AsyncEventProcessor(storage, "pairs", batch_size=50)
    processor.register_handler(PrometheusHandler(registry=registry, **options))
    await processor.process_events_once()
    return registry


@_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), tasks=st.integers(1, 40))
def test_any_stored_order_gives_the_reference_numbers(seed: int, tasks: int) -> None:
    rng = random.Random(seed)
    events = workload(rng, tasks)
    rng.shuffle(events)
    registry = asyncio.run(_process(MemoryBackend(), events))
    assert pairing_samples(registry) == reference(events)


@_SETTINGS
@given(seed=st.integers(0, 2**32 - 1), tasks=st.integers(1, 40), cut=st.floats(0, 1))
def test_a_restart_at_any_point_keeps_the_numbers(seed: int, tasks: int, cut: float) -> None:
    rng = random.Random(seed)
    events = workload(rng, tasks)
    rng.shuffle(events)
    first, second = asyncio.run(_restarted(events, min(int(cut * len(events)), len(events) - 1)))
    assert pairing_samples(first, second, gauges=False) == reference(events)


async def _restarted(events: list[TaskEvent], stop_after: int) -> tuple[Any, Any]:
    """All events stored first; one processor handles ``stop_after`` + 1 of them and
    stops; a new one (same name, fresh pairing and registry) handles the rest."""
    storage = MemoryBackend()
    await storage.append(events)
    first = CollectorRegistry()
    processor = AsyncEventProcessor(storage, "pairs", batch_size=1)
    processor.register_handler(PrometheusHandler(registry=first))
    seen = 0

    def stop_at(event: TaskEvent) -> Any:
        nonlocal seen
        seen += 1
        return processor.stop() if seen == stop_after + 1 else None

    processor.register_handler(stop_at)
    await processor.start()
    second = CollectorRegistry()
    again = AsyncEventProcessor(storage, "pairs", batch_size=50)
    again.register_handler(PrometheusHandler(registry=second))
    await again.process_events_once()
    return first, second


async def test_a_shuffled_backlog_in_sqlite_gives_the_reference_numbers(tmp_path: Any) -> None:
    rng = random.Random(12)
    events = workload(rng, 300)
    rng.shuffle(events)
    storage = SQLiteBackend(str(tmp_path / "events.db"))
    try:
        registry = await _process(storage, events)
    finally:
        await storage.close()
    got = pairing_samples(registry)
    assert got == reference(events)
    assert ("omniq_task_events_total", frozenset({("event_type", "STARTED"),
                                                  ("queue", "unknown")})) not in got


# -- jitter: events delayed within and beyond the reorder window -------------------------
def _arrivals(events: list[TaskEvent], rng: random.Random, most: float) -> list[TaskEvent]:
    delayed = [(e.timestamp.timestamp() + rng.uniform(0, most), i, e)
               for i, e in enumerate(events)]
    return [e for _at, _i, e in sorted(delayed)]


async def _live(arrivals: list[TaskEvent], window: float) -> list[Observation]:
    """Each event stored, then paired at once (as a processor keeping up would)."""
    storage = MemoryBackend()
    pairing = TaskPairing(storage.task_history, reorder_window=window)
    seen: list[Observation] = []
    for event in arrivals:
        await storage.append([event])
        seen += (await pairing.observe(event)).all()
    seen += pairing.release(float("inf"))
    return seen


def _tally(observations: list[Observation]) -> dict[str, Any]:
    counts = collections.Counter((o.event.event_type, o.queue) for o in observations
                                 if o.counted and not o.duplicate)
    attempts = sorted((o.closed.task_id, o.closed.start, o.closed.end, o.closed.status)
                      for o in observations if o.closed is not None)
    waits = sorted((o.event.task_id, o.event.timestamp.timestamp(), round(o.queue_wait, 6))
                   for o in observations if o.queue_wait is not None)
    unpaired = collections.Counter(r for o in observations for r in o.unpaired)
    return {"counts": counts, "attempts": attempts, "waits": waits, "unpaired": unpaired,
            "waiting": sum(o.waiting for o in observations),
            "open": sum(o.opened for o in observations)
            - sum(1 for o in observations if o.closed is not None and o.closed.was_open)}


def test_jitter_within_the_window_is_exact_and_beyond_it_is_late_never_wrong() -> None:
    rng = random.Random(5)
    events = workload(rng, 250, spread_ms=60_000)
    exact = _tally(asyncio.run(_live(sorted(events, key=lambda e: e.timestamp), 10.0)))
    assert exact["unpaired"] == {} and exact["waiting"] == 0 and exact["open"] == 0
    within = _tally(asyncio.run(_live(_arrivals(events, rng, 9.9), 10.0)))
    assert within == exact
    beyond = _tally(asyncio.run(_live(_arrivals(events, rng, 40.0), 10.0)))
    # every event is counted once; under its queue, or "unknown" when its task's
    # ENQUEUED came later than the window
    assert sum(beyond["counts"].values()) == sum(exact["counts"].values())
    assert all(n <= exact["counts"][key] for key, n in beyond["counts"].items()
               if key[1] != "unknown")
    # never a wrong attempt: each is a real one; an attempt whose FAILED came later than
    # the window was decided as ended by its RETRIED (status "retried") at the watermark
    starts = {(task, start) for task, start, _end, _status in exact["attempts"]}
    wrong = [a for a in beyond["attempts"]
             if a not in exact["attempts"] and not (a[3] == "retried" and a[:2] in starts)]
    assert wrong == []
    # each wait ends at a real STARTED and is never negative (one decided at the
    # watermark may miss a RETRIED that came later than the window)
    started = {(task, start) for task, start, _w in exact["waits"]}
    assert all((task, start) in started and wait >= 0 for task, start, wait in beyond["waits"])
    assert set(beyond["unpaired"]) <= {"late", "superseded", "no_start"}
    assert beyond["unpaired"]["late"] > 0
    assert all(end >= start for _t, start, end, _s in beyond["attempts"])


# -- tracing: each attempt span starts and ends at its events' timestamps -----------------
async def test_tracing_spans_on_a_shuffled_workload_have_the_event_timestamps() -> None:
    rng = random.Random(3)
    events = workload(rng, 120)
    rng.shuffle(events)
    storage = MemoryBackend()
    await storage.append(events)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    processor = AsyncEventProcessor(storage, "spans", batch_size=50)
    processor.register_handler(TracingHandler(provider, producer_spans=False))
    await processor.process_events_once()
    spans = sorted(
        (s.attributes["messaging.message.id"], s.start_time, s.end_time)
        for s in exporter.get_finished_spans()
    )
    expected = sorted((task, start, end) for task, start, end, _s in _attempts(events))
    assert spans == expected


def _attempts(events: list[TaskEvent]) -> list[tuple[str, int, int, str]]:
    """Each attempt's task, start and end (ns) and status, by the reference rules."""
    out = []
    by_task: dict[str, list[TaskEvent]] = collections.defaultdict(list)
    for event in events:
        by_task[event.task_id].append(event)
    for task, task_events in by_task.items():
        running: TaskEvent | None = None
        for event in sorted(task_events, key=lambda e: e.timestamp):
            if event.event_type == "STARTED":
                running = event
            elif running is not None and event.event_type != "ENQUEUED":
                out.append((task, running.timestamp_ns, event.timestamp_ns, event.event_type))
                running = None
    return out
