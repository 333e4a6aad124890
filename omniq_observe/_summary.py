"""Per-queue figures computed from events: the model behind ``stats``, ``top`` and the web view.

Events are paired with :class:`~omniq_observe.pairing.TaskPairing`, the same rules the
Prometheus handler uses, so queues, durations and queue waits agree with ``/metrics``:

* the queue of an event is its task's queue (from the task's ENQUEUED);
* a duration is one attempt, STARTED to the event that ended it (COMPLETED, FAILED,
  TIMEOUT, CANCELLED, or a RETRIED with no terminal event before it), ``Attempt.duration``;
  a queue wait is ENQUEUED (or RETRIED) to the next STARTED, ``Observation.queue_wait``;
* "failed" counts FAILED and TIMEOUT events; the success ratio is COMPLETED over
  COMPLETED + FAILED + TIMEOUT (per attempt; CANCELLED is left out), as in the recording
  rules and dashboards (``omniq_observe.models.event.FINISHED_TYPES``);
* quantiles are exact, nearest rank, over the samples kept.

With ``window`` set (``top``), rates and quantiles cover the last ``window`` seconds of
event time before ``now``; without it (``stats``), everything observed counts.
"""

from __future__ import annotations

import collections
import math
from array import array
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from omniq_observe._details import queue_of
from omniq_observe.models.event import FAILED_TYPES, FINISHED_TYPES, EventType, TaskEvent
from omniq_observe.pairing import UNKNOWN_QUEUE, Attempt, Observation, TaskPairing

__all__ = [
    "EVENT_TYPES",
    "FAILED_TYPES",
    "QueueFigures",
    "QueueLive",
    "QueueResolver",
    "Summary",
    "nearest_rank",
    "quantile",
]

#: The well-known types in lifecycle order (the columns of ``stats`` and ``demo``).
EVENT_TYPES = tuple(t.value for t in EventType)

History = Callable[[str], Awaitable[list[TaskEvent]]]


def quantile(samples: Sequence[float], q: float) -> float | None:
    """Return the nearest-rank ``q`` quantile of ``samples`` (None when empty)."""
    return nearest_rank(sorted(samples), q)


def nearest_rank(ordered: Sequence[float], q: float) -> float | None:
    """Return the nearest-rank ``q`` quantile of samples already sorted (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class QueueFigures:
    """Everything observed for one queue (the rows of ``stats``)."""

    queue: str
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    durations: array[float] = field(default_factory=lambda: array("d"))
    waits: array[float] = field(default_factory=lambda: array("d"))

    @property
    def total(self) -> int:
        """All events of the queue."""
        return sum(self.counts.values())

    @property
    def success_ratio(self) -> float | None:
        """COMPLETED over COMPLETED + FAILED + TIMEOUT; None before any attempt finished."""
        ended = sum(self.counts[t] for t in FINISHED_TYPES)
        return None if ended == 0 else self.counts["COMPLETED"] / ended


@dataclass(frozen=True)
class QueueLive:
    """One row of ``top``: rates and quantiles over the window before ``now``."""

    queue: str
    events_per_second: float
    running: int
    completed_per_second: float
    failed_per_second: float
    duration_p50: float | None
    duration_p95: float | None
    wait_p95: float | None
    oldest_task: str | None
    oldest_age: float | None


@dataclass
class _Recent:
    """The samples of one queue inside the window, oldest first."""

    events: collections.deque[tuple[float, str]] = field(default_factory=collections.deque)
    durations: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)
    waits: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)
    running: dict[str, float] = field(default_factory=dict)  # task id -> start (epoch s)


class Summary:
    """Feeds events through task pairing and keeps per-queue figures.

    Args:
        history: reads a task's stored events (``storage.task_history``), so that events
            whose ENQUEUED or STARTED came before the first one observed still pair.
        window: seconds of event time ``live()`` rates and quantiles cover; ``None``
            keeps no windowed samples (``stats``).
        ttl: seconds (event time) after which a task that never ended is dropped.
    """

    def __init__(
        self, history: History | None = None, *, window: float | None = None, ttl: float = 3600.0
    ) -> None:
        self.pairing = TaskPairing(history, ttl=ttl)
        self.window = window
        self.figures: dict[str, QueueFigures] = {}
        self._recent: dict[str, _Recent] = {}
        self.observed = 0
        self.newest: float | None = None  # event time of the newest event (epoch seconds)

    async def add(self, event: TaskEvent) -> Observation:
        """Observe one event (reading its task's history when pairing needs it)."""
        obs = await self.pairing.observe(event)
        for each in obs.all():
            self._record(each)
        return obs

    def finish(self, now: float = math.inf) -> None:
        """Decide what waited for the reorder window, at wall-clock ``now`` (the default:
        no more events are coming)."""
        for obs in self.pairing.release(now):
            self._record(obs)

    async def add_all(self, events: Iterable[TaskEvent]) -> None:
        """Observe events in order."""
        for event in events:
            await self.add(event)

    def add_now(self, event: TaskEvent) -> Observation:
        """Observe one event without reading storage."""
        obs = self.pairing.observe_now(event)
        for each in obs.all():
            self._record(each)
        return obs

    def _record(self, obs: Observation) -> None:
        if obs.duplicate:
            return
        event = obs.event
        ts = event.timestamp.timestamp()
        figures = self._figures_of(obs.queue)
        recent = self._recent_of(obs.queue)
        windowed = self.window is not None
        if obs.counted:
            self.observed += 1
            if self.newest is None or ts > self.newest:
                self.newest = ts
            figures.counts[event.event_type] += 1
            if windowed:
                recent.events.append((ts, event.event_type))
        if obs.queue_wait is not None:
            figures.waits.append(obs.queue_wait)
            if windowed:
                recent.waits.append((ts, obs.queue_wait))
        if obs.opened:
            recent.running[event.task_id] = ts
        if obs.closed is not None:
            self._end(obs.closed, ts)
        for attempt in obs.expired:
            self._recent_of(attempt.queue).running.pop(attempt.task_id, None)

    def _end(self, attempt: Attempt, ts: float) -> None:
        """An attempt ended (seen at event time ``ts``): its duration counts in its queue."""
        recent = self._recent_of(attempt.queue)
        recent.running.pop(attempt.task_id, None)
        self._figures_of(attempt.queue).durations.append(attempt.duration)
        if self.window is not None:
            recent.durations.append((ts, attempt.duration))

    def _figures_of(self, queue: str) -> QueueFigures:
        figures = self.figures.get(queue)
        if figures is None:
            figures = self.figures[queue] = QueueFigures(queue)
        return figures

    def _recent_of(self, queue: str) -> _Recent:
        recent = self._recent.get(queue)
        if recent is None:
            recent = self._recent[queue] = _Recent()
        return recent

    def queues(self) -> list[QueueFigures]:
        """Every queue's figures, by queue name."""
        return [self.figures[name] for name in sorted(self.figures)]

    def totals(self) -> QueueFigures:
        """All queues together, as one :class:`QueueFigures` named ``total``."""
        total = QueueFigures("total")
        for figures in self.figures.values():
            total.counts.update(figures.counts)
            total.durations.extend(figures.durations)
            total.waits.extend(figures.waits)
        return total

    def live(self, now: float) -> list[QueueLive]:
        """The ``top`` rows at ``now`` (epoch seconds), by queue name.

        Raises:
            ValueError: the summary was made without a ``window``.
        """
        if self.window is None:
            msg = "live() needs a Summary made with window=seconds"
            raise ValueError(msg)
        window = self.window
        cutoff = now - window
        rows = []
        for name in sorted(set(self._recent) | set(self.figures)):
            recent = self._recent_of(name)
            for samples in (recent.events, recent.durations, recent.waits):
                while samples and samples[0][0] < cutoff:
                    samples.popleft()
            kinds = collections.Counter(kind for ts, kind in recent.events if ts <= now)
            durations = [d for ts, d in recent.durations if ts <= now]
            waits = [w for ts, w in recent.waits if ts <= now]
            oldest_task, oldest_age = None, None
            if recent.running:
                oldest_task, start = min(recent.running.items(), key=lambda item: item[1])
                oldest_age = max(0.0, now - start)
            rows.append(
                QueueLive(
                    queue=name,
                    events_per_second=sum(kinds.values()) / window,
                    running=len(recent.running),
                    completed_per_second=kinds["COMPLETED"] / window,
                    failed_per_second=sum(kinds[t] for t in FAILED_TYPES) / window,
                    duration_p50=quantile(durations, 0.5),
                    duration_p95=quantile(durations, 0.95),
                    wait_p95=quantile(waits, 0.95),
                    oldest_task=oldest_task,
                    oldest_age=oldest_age,
                )
            )
        return rows

    def live_total(self, now: float) -> QueueLive:
        """The ``top`` total row at ``now``: every queue together, named ``total``.

        Raises:
            ValueError: the summary was made without a ``window``.
        """
        if self.window is None:
            msg = "live_total() needs a Summary made with window=seconds"
            raise ValueError(msg)
        window, cutoff = self.window, now - self.window
        recents = list(self._recent.values())
        kinds = collections.Counter(
            kind for r in recents for ts, kind in r.events if cutoff <= ts <= now
        )
        durations = [d for r in recents for ts, d in r.durations if cutoff <= ts <= now]
        waits = [w for r in recents for ts, w in r.waits if cutoff <= ts <= now]
        running = [(start, task) for r in recents for task, start in r.running.items()]
        oldest = min(running) if running else None
        return QueueLive(
            queue="total",
            events_per_second=sum(kinds.values()) / window,
            running=len(running),
            completed_per_second=kinds["COMPLETED"] / window,
            failed_per_second=sum(kinds[t] for t in FAILED_TYPES) / window,
            duration_p50=quantile(durations, 0.5),
            duration_p95=quantile(durations, 0.95),
            wait_p95=quantile(waits, 0.95),
            oldest_task=None if oldest is None else oldest[1],
            oldest_age=None if oldest is None else max(0.0, now - oldest[0]),
        )


class QueueResolver:
    """Names the queue of any event by the pairing's rules, without pairing.

    The queue of a task comes from its ENQUEUED (``queue_name`` or ``queue``; "default"
    when it names none); later events inherit it. For a task whose ENQUEUED was not seen:
    the event's own details, then the task's stored history, then "unknown".

    Args:
        history: reads a task's stored events; ``None``: no lookups.
        max_tasks: how many task queues are remembered (oldest forgotten first).
    """

    def __init__(self, history: History | None = None, *, max_tasks: int = 100_000) -> None:
        self.history = history
        self.max_tasks = max_tasks
        self._queues: dict[str, str] = {}

    async def queue(self, event: TaskEvent) -> str:
        """Return the queue of ``event``'s task."""
        task_id = event.task_id
        if event.event_type == "ENQUEUED":
            return self._remember(task_id, queue_of(event.details) or "default")
        known = self._queues.get(task_id)
        if known is not None:
            return known
        queue = queue_of(event.details)
        if queue is None and self.history is not None:
            for stored in await self.history(task_id):
                if stored.event_type == "ENQUEUED":
                    queue = queue_of(stored.details) or "default"
                    break
        return self._remember(task_id, queue or UNKNOWN_QUEUE)

    def _remember(self, task_id: str, queue: str) -> str:
        queues = self._queues
        queues[task_id] = queue
        if len(queues) > self.max_tasks:
            del queues[next(iter(queues))]
        return queue
