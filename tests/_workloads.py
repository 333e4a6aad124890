"""Scripted task workloads with retries, timeouts and cancellations, and the reference
numbers computed from them the simple way: each task's events sorted by event time."""

from __future__ import annotations

import collections
import random
from datetime import datetime, timedelta, timezone
from typing import Any

from omniq_observe.models.event import TaskEvent

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
QUEUES = ("emails", "reports", "billing")
_RANK = {"ENQUEUED": 0, "STARTED": 1, "RETRIED": 3}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def ev(task: str, kind: str, at_ms: int, **details: Any) -> TaskEvent:
    return TaskEvent(task_id=task, event_type=kind,
                     timestamp=T0 + timedelta(milliseconds=at_ms), details=details)


def workload(rng: random.Random, tasks: int, spread_ms: int = 120_000,
             prefix: str = "t") -> list[TaskEvent]:
    """``tasks`` task lifecycles in event-time order per task (not across tasks)."""
    events: list[TaskEvent] = []
    for n in range(tasks):
        task, queue = f"{prefix}{n}", rng.choice(QUEUES)
        at = rng.randrange(spread_ms)
        enqueue: dict[str, Any] = {"queue_name": queue}
        if rng.random() < 0.15:  # a delayed task: it waits from its eta
            eta = T0 + timedelta(milliseconds=at + rng.randrange(1, 3000))
            enqueue["eta"] = eta.isoformat()
        events.append(ev(task, "ENQUEUED", at, **enqueue))
        if rng.random() < 0.08:  # cancelled while still queued
            events.append(ev(task, "CANCELLED", at + rng.randrange(1, 4000)))
            continue
        for attempt in range(1, 4):
            at += rng.randrange(1, 5000)
            events.append(ev(task, "STARTED", at, attempt=attempt, worker_id=f"w{n % 3}"))
            at += rng.randrange(1, 8000)
            last = attempt == 3
            roll = rng.random()
            if roll < 0.45 or (last and roll < 0.7):
                events.append(ev(task, "COMPLETED", at, attempt=attempt))
                break
            if roll < 0.55 or (last and roll < 0.85):
                kind = "TIMEOUT" if roll < 0.5 else "CANCELLED"
                events.append(ev(task, kind, at, attempt=attempt))
                break
            if roll < 0.7 or last:
                events.append(ev(task, "FAILED", at, error=rng.choice(
                    ["ValueError: bad", "KeyError: k", "TimeoutError: slow"]), attempt=attempt))
                if last:
                    break
                at += rng.randrange(1, 50)
            if rng.random() < 0.2:
                backoff = T0 + timedelta(milliseconds=at + rng.randrange(1, 2000))
                events.append(ev(task, "RETRIED", at, attempt=attempt + 1, eta=backoff.isoformat()))
            else:
                events.append(ev(task, "RETRIED", at, attempt=attempt + 1))
    return events


def _due(event: TaskEvent) -> float:
    eta = event.details.get("eta")
    if isinstance(eta, str):
        return datetime.fromisoformat(eta).timestamp()
    return event.timestamp.timestamp()


def reference(events: list[TaskEvent], *, gauges: bool = True) -> Samples:
    """The Prometheus samples a correct pairing gives (zero samples left out)."""
    out: collections.Counter[tuple[str, frozenset[tuple[str, str]]]] = collections.Counter()
    by_task: dict[str, list[TaskEvent]] = collections.defaultdict(list)
    for event in events:
        by_task[event.task_id].append(event)

    def add(name: str, amount: float, **labels: str) -> None:
        out[(name, frozenset(labels.items()))] += amount

    for task_events in by_task.values():
        task_events.sort(key=lambda e: (e.timestamp, _RANK.get(e.event_type, 2)))
        queue = task_events[0].details["queue_name"]
        source: float | None = None
        running: float | None = None
        for event in task_events:
            kind, ts = event.event_type, event.timestamp.timestamp()
            add("omniq_task_events_total", 1, event_type=kind, queue=queue)
            if kind == "ENQUEUED":
                source = _due(event)
            elif kind == "STARTED":
                if source is not None:
                    add("omniq_task_queue_wait_seconds_count", 1, queue=queue)
                    add("omniq_task_queue_wait_seconds_sum", max(0.0, ts - source), queue=queue)
                source, running = None, ts
            elif kind == "RETRIED":
                if running is not None:
                    add("omniq_task_duration_seconds_count", 1, queue=queue, status="failed")
                    add("omniq_task_duration_seconds_sum", ts - running, queue=queue,
                        status="failed")
                running, source = None, _due(event)
                add("omniq_task_retries_total", 1, queue=queue)
            else:
                if kind == "FAILED":
                    error_type = str(event.details["error"]).split(":")[0]
                    add("omniq_task_failures_total", 1, queue=queue, error_type=error_type)
                if running is not None:
                    status = kind.lower()
                    add("omniq_task_duration_seconds_count", 1, queue=queue, status=status)
                    add("omniq_task_duration_seconds_sum", ts - running, queue=queue,
                        status=status)
                running = source = None
    return {key: round(value, 6) for key, value in out.items() if value}


_KEPT = (
    "omniq_task_events_total", "omniq_task_duration_seconds_count",
    "omniq_task_duration_seconds_sum", "omniq_task_queue_wait_seconds_count",
    "omniq_task_queue_wait_seconds_sum", "omniq_task_retries_total",
    "omniq_task_failures_total", "omniq_observe_unpaired_events_total",
    "omniq_tasks_in_progress", "omniq_tasks_waiting",
)


def pairing_samples(*registries: Any, gauges: bool = True) -> Samples:
    """The pairing-related, non-zero samples of ``registries``, summed."""
    out: collections.Counter[tuple[str, frozenset[tuple[str, str]]]] = collections.Counter()
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                if sample.name not in _KEPT:
                    continue
                if not gauges and sample.name.startswith("omniq_tasks_"):
                    continue
                out[(sample.name, frozenset(sample.labels.items()))] += sample.value
    return {key: round(value, 6) for key, value in out.items() if value}
