"""A synthetic OmniQ workload for ``omniq-observe demo``.

Each task is enqueued on one of a few queues (the first queues busier), waits, runs on a
worker and ends COMPLETED, FAILED, TIMEOUT or CANCELLED; a failed or timed-out attempt is
RETRIED up to ``max_attempts``. Durations and queue waits are log-normal per queue (a
``reports`` task runs for seconds, a ``webhooks`` call for a fraction of one), capped so
that one task spans at most :data:`MAX_TASK_SPAN` seconds. The ENQUEUED event carries the
W3C trace context of a PRODUCER span made with a local OpenTelemetry SDK tracer provider
(never the global one), as a real producer's logger would store it.

Timestamps are synthetic. :func:`backfill` lays ``count`` tasks out in the past, ``rate``
tasks per second, ending before now; :func:`run_live` makes new tasks in real time and
writes each event when its time comes. Both write in event-time order, through
:meth:`AsyncEventLogger.log_events` batches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from omniq_observe._validate import between, fraction
from omniq_observe.events.logger import AsyncEventLogger
from omniq_observe.models.event import TaskEvent

__all__ = [
    "DEFAULT_FAILURE_RATE",
    "INCIDENT_FAILURE_RATE",
    "MAX_TASK_SPAN",
    "QUEUE_PROFILES",
    "Tally",
    "Timeline",
    "Workload",
    "backfill",
    "run_live",
]

_UTC = timezone.utc
#: The longest one synthetic task lasts, ENQUEUED to its final event (seconds).
MAX_TASK_SPAN = 90.0
_MAX_WAIT = 5.0
_MAX_DURATION = 20.0
_MAX_BACKOFF = 4.0
#: The demo's chance that one attempt fails: clearly under the 10 % failure-ratio alert.
DEFAULT_FAILURE_RATE = 0.03
#: The failure rate of the queue in trouble during an incident (``demo --incident``).
INCIDENT_FAILURE_RATE = 0.6


@dataclass(frozen=True)
class QueueProfile:
    """How tasks on one queue behave: median queue wait and run time, the timeout."""

    name: str
    task_names: tuple[str, ...]
    wait_median: float
    duration_median: float
    timeout_seconds: float


QUEUE_PROFILES = (
    QueueProfile("emails", ("send_welcome", "send_receipt", "send_digest"), 0.08, 0.25, 5.0),
    QueueProfile("payments", ("charge_card", "refund", "reconcile"), 0.03, 0.6, 5.0),
    QueueProfile("reports", ("monthly_report", "export_csv"), 0.5, 3.0, 15.0),
    QueueProfile("images", ("resize", "thumbnail", "watermark"), 0.2, 1.2, 8.0),
    QueueProfile("webhooks", ("deliver_webhook",), 0.02, 0.15, 3.0),
    QueueProfile("search-index", ("index_document", "reindex"), 0.3, 0.8, 6.0),
)
_ERRORS = (
    ("ConnectionError", "upstream refused the connection", "client.send(request)"),
    ("ValueError", "invalid recipient address 'nobody@'", "validate(address)"),
    ("KeyError", "'customer_id'", "payload['customer_id']"),
    ("RuntimeError", "decoder crashed on frame 3", "decoder.decode(frame)"),
)
_RESULTS = ({"status": "ok"}, {"status": "ok", "items": 3}, {"status": "sent"}, None)


def _profile(index: int) -> QueueProfile:
    if index < len(QUEUE_PROFILES):
        return QUEUE_PROFILES[index]
    base = QUEUE_PROFILES[index % len(QUEUE_PROFILES)]
    return QueueProfile(f"queue-{index + 1}", base.task_names, base.wait_median,
                        base.duration_median, base.timeout_seconds)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, _UTC)


@dataclass
class Tally:
    """What was written: events per queue and type, and tasks."""

    counts: dict[str, collections.Counter[str]] = field(default_factory=dict)
    tasks: int = 0

    def add(self, queue: str, event_type: str) -> None:
        """Count one written event."""
        counter = self.counts.get(queue)
        if counter is None:
            counter = self.counts[queue] = collections.Counter()
        counter[event_type] += 1

    @property
    def events(self) -> int:
        """All written events."""
        return sum(sum(c.values()) for c in self.counts.values())

    def by_type(self) -> collections.Counter[str]:
        """Written events per type, all queues together."""
        total: collections.Counter[str] = collections.Counter()
        for counter in self.counts.values():
            total.update(counter)
        return total


class Workload:
    """Makes the events of synthetic tasks.

    Args:
        queues: how many queues (named after :data:`QUEUE_PROFILES`, then ``queue-N``).
        failure_rate: the chance that one attempt fails (FAILED or TIMEOUT).
        seed: makes the tasks, outcomes and timings repeatable.
        cancel_rate: the chance that a task is cancelled (queued or running).
        max_attempts: attempts before a failing task gives up.
        workers: how many worker ids STARTED events name.
        tracer_provider: makes the producer spans; a private SDK provider by default.
        incident: (queue, epoch seconds): tasks of that queue enqueued from then on fail
            :data:`INCIDENT_FAILURE_RATE` of their attempts.

    Raises:
        ConfigurationError: a setting is out of range.
    """

    def __init__(
        self,
        *,
        queues: int = 4,
        failure_rate: float = DEFAULT_FAILURE_RATE,
        seed: int | None = None,
        cancel_rate: float = 0.02,
        max_attempts: int = 3,
        workers: int = 8,
        tracer_provider: TracerProvider | None = None,
        incident: tuple[str, float] | None = None,
    ) -> None:
        queues = between("queues", queues, 1, 1000)
        failure_rate = fraction("failure_rate", failure_rate)
        self.profiles = [_profile(i) for i in range(queues)]
        self.weights = [1.0 / (i + 1) for i in range(queues)]
        self.failure_rate = failure_rate
        self.incident = incident
        self.cancel_rate = cancel_rate
        self.max_attempts = max_attempts
        self.workers = [f"worker-{i + 1}" for i in range(workers)]
        self.rng = random.Random(seed)
        provider = tracer_provider or TracerProvider(
            resource=Resource.create({"service.name": "omniq-observe-demo"})
        )
        self.tracer = provider.get_tracer("omniq_observe.demo")

    def _lognormal(self, median: float, cap: float) -> float:
        return min(cap, median * self.rng.lognormvariate(0.0, 0.7))

    def _traceparent(self, queue: str, at: float) -> str:
        # A real SDK span, as the producer's instrumentation would make; nothing exports
        # it, so it carries no attributes.
        start_ns = int(at * 1e9)
        span = self.tracer.start_span(f"send {queue}", kind=SpanKind.PRODUCER,
                                      start_time=start_ns)
        span.end(end_time=start_ns + 200_000)
        ctx = span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def task(self, enqueued_at: float) -> tuple[str, list[TaskEvent]]:
        """Return the queue and the events of one new task enqueued at ``enqueued_at``."""
        rng = self.rng
        profile = rng.choices(self.profiles, self.weights)[0]
        queue = profile.name
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        events = [
            TaskEvent(
                task_id=task_id,
                event_type="ENQUEUED",
                timestamp=_ts(enqueued_at),
                details={"queue_name": queue, "task_name": rng.choice(profile.task_names)},
                trace_context={"traceparent": self._traceparent(queue, enqueued_at)},
            )
        ]
        t = enqueued_at
        failure_rate = self.failure_rate
        if self.incident is not None and queue == self.incident[0] and (
            enqueued_at >= self.incident[1]
        ):
            failure_rate = INCIDENT_FAILURE_RATE
        half_cancel = self.cancel_rate / 2
        if rng.random() < half_cancel:  # cancelled while still queued
            t += self._lognormal(profile.wait_median, _MAX_WAIT)
            events.append(self._event(task_id, "CANCELLED", t, {"reason": "cancelled by user"}))
            return queue, events
        for attempt in range(1, self.max_attempts + 1):
            t += self._lognormal(profile.wait_median, _MAX_WAIT)
            worker = rng.choice(self.workers)
            events.append(
                self._event(task_id, "STARTED", t, {"worker_id": worker, "attempt": attempt})
            )
            duration = self._lognormal(profile.duration_median, _MAX_DURATION)
            roll = rng.random()
            if roll < half_cancel:
                t += duration * 0.3
                details = {"reason": "worker shutting down", "attempt": attempt}
                events.append(self._event(task_id, "CANCELLED", t, details))
                return queue, events
            if roll >= half_cancel + failure_rate:
                t += min(duration, profile.timeout_seconds * 0.9)
                details = {"result": rng.choice(_RESULTS), "attempt": attempt}
                events.append(self._event(task_id, "COMPLETED", t, details))
                return queue, events
            if rng.random() < 0.25:
                t += profile.timeout_seconds
                details = {"timeout_seconds": profile.timeout_seconds, "attempt": attempt}
                events.append(self._event(task_id, "TIMEOUT", t, details))
            else:
                t += min(duration, profile.timeout_seconds * 0.9)
                events.append(self._event(task_id, "FAILED", t, self._failure(attempt)))
            if attempt == self.max_attempts:
                return queue, events
            t += min(_MAX_BACKOFF, 0.5 * 2 ** (attempt - 1) * (0.5 + rng.random()))
            details = {"attempt": attempt + 1, "max_attempts": self.max_attempts}
            events.append(self._event(task_id, "RETRIED", t, details))
        return queue, events  # pragma: no cover - the loop always returns

    def _failure(self, attempt: int) -> dict[str, object]:
        error_type, message, line = self.rng.choice(_ERRORS)
        traceback = (
            "Traceback (most recent call last):\n"
            '  File "worker.py", line 42, in run_task\n'
            f"    {line}\n"
            f"{error_type}: {message}"
        )
        return {
            "error": f"{error_type}: {message}",
            "error_type": error_type,
            "traceback": traceback,
            "attempt": attempt,
        }

    @staticmethod
    def _event(task_id: str, kind: str, at: float, details: dict[str, object]) -> TaskEvent:
        return TaskEvent(task_id=task_id, event_type=kind, timestamp=_ts(at), details=details)


class Timeline:
    """Holds the events of tasks in flight and hands them out in event-time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, TaskEvent]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, queue: str, events: list[TaskEvent]) -> None:
        """Add one task's events."""
        for event in events:
            self._seq += 1
            heapq.heappush(self._heap, (event.timestamp.timestamp(), self._seq, queue, event))

    def pop_until(self, until: float) -> list[tuple[str, TaskEvent]]:
        """Remove and return the events at or before ``until`` (epoch seconds), in order."""
        heap, out = self._heap, []
        while heap and heap[0][0] <= until:
            _, _, queue, event = heapq.heappop(heap)
            out.append((queue, event))
        return out


async def _write(
    logger: AsyncEventLogger, batch: list[tuple[str, TaskEvent]], tally: Tally
) -> None:
    await logger.log_events([event for _, event in batch])
    for queue, event in batch:
        tally.add(queue, event.event_type)


async def backfill(
    logger: AsyncEventLogger,
    workload: Workload,
    count: int,
    *,
    rate: float,
    end: float | None = None,
    batch_size: int = 2000,
    tally: Tally | None = None,
    on_progress: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> Tally:
    """Write ``count`` tasks laid out in the past, ``rate`` per second, all before ``end``.

    Args:
        logger: writes the events.
        workload: makes the tasks.
        count: how many tasks.
        rate: tasks per second of event time.
        end: no event is later than this (epoch seconds; default now).
        batch_size: events per ``log_events`` call.
        tally: counts what was written (a new one by default).
        on_progress: called with the number of tasks made since the last call.
        stop: when set, writing stops after the batch in flight; the events not yet
            written are dropped and ``tally.tasks`` counts the tasks whose ENQUEUED was
            written.

    Returns:
        The tally of what was written.
    """
    tally = tally or Tally()
    enqueued_before = tally.by_type()["ENQUEUED"]
    end = time.time() if end is None else end
    spacing = 1.0 / rate
    run = _Backfill(logger, workload, tally, batch_size, on_progress)
    await run.make(end - MAX_TASK_SPAN - count * spacing, spacing, count, stop)
    if stop is not None and stop.is_set():
        tally.tasks += tally.by_type()["ENQUEUED"] - enqueued_before
        return tally
    await run.finish()
    tally.tasks += count
    return tally


@dataclass
class _Backfill:
    """Makes tasks in arrival order and writes their events once due, each batch
    committing while the next one is made."""

    logger: AsyncEventLogger
    workload: Workload
    tally: Tally
    batch_size: int
    on_progress: Callable[[int], None] | None
    timeline: Timeline = field(default_factory=Timeline)
    pending: list[tuple[str, TaskEvent]] = field(default_factory=list)  # due, not yet written
    made: int = 0  # tasks made since the last progress report
    _writing: asyncio.Task[None] | None = None

    async def make(
        self, start: float, spacing: float, count: int, stop: asyncio.Event | None
    ) -> None:
        """Make ``count`` tasks about ``spacing`` apart from ``start`` on; write the events
        due by then in batches. Stops early, after the batch in flight, when ``stop`` is set."""
        try:
            for index in range(count):
                if stop is not None and stop.is_set():
                    break
                enqueued_at = start + (index + self.workload.rng.random()) * spacing
                self.timeline.push(*self.workload.task(enqueued_at))
                self.made += 1
                self.pending.extend(self.timeline.pop_until(enqueued_at))
                if len(self.pending) >= self.batch_size:
                    await self._write_pending()
            if self._writing is not None:
                await self._writing
        finally:
            if self._writing is not None and not self._writing.done():
                self._writing.cancel()

    async def _write_pending(self) -> None:
        """Start writing the pending events once the batch before has committed."""
        if self._writing is not None:
            await self._writing
        self._writing = asyncio.ensure_future(_write(self.logger, self.pending, self.tally))
        self.pending = []
        if self.on_progress is not None:
            self.on_progress(self.made)
            self.made = 0

    async def finish(self) -> None:
        """Write every event still held (the tasks' later events), then report progress."""
        rest = self.pending + self.timeline.pop_until(float("inf"))
        self.pending = []
        for first in range(0, len(rest), self.batch_size):
            await _write(self.logger, rest[first : first + self.batch_size], self.tally)
        if self.on_progress is not None and self.made:
            self.on_progress(self.made)


async def run_live(
    logger: AsyncEventLogger,
    workload: Workload,
    *,
    rate: float,
    stop: asyncio.Event,
    tally: Tally,
    tick: float = 0.1,
) -> None:
    """Make ``rate`` new tasks per second in real time until ``stop`` is set.

    Each event is written when its (real) time comes, so a task enqueued now starts after
    its queue wait and ends after its run time. Events not yet due at ``stop`` are dropped,
    like tasks still running when the workers die; ``tally`` counts only written events.
    """
    if rate <= 0:
        await stop.wait()
        return
    rng = workload.rng
    timeline = Timeline()
    next_arrival = time.time()
    while not stop.is_set():
        now = time.time()
        while next_arrival <= now:
            timeline.push(*workload.task(next_arrival))
            tally.tasks += 1
            next_arrival += rng.expovariate(rate)
        due = timeline.pop_until(now)
        if due:
            await _write(logger, due, tally)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick)
