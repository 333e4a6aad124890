"""The overview's figures, kept up to date event by event for three windows.

Events go through :class:`~omniq_observe.pairing.TaskPairing` and are counted by the
same rules as ``stats`` and ``top`` (:mod:`omniq_observe._summary`): an event's queue is
its task's queue; a duration is one attempt (STARTED to its terminal event, retried
attempts excluded); a queue wait runs from ENQUEUED or RETRIED to the next STARTED;
"failed" is FAILED + TIMEOUT; the success ratio is COMPLETED over COMPLETED + FAILED +
TIMEOUT (``FINISHED_TYPES``: the one definition of ``stats``, ``top`` and the rules).

Samples land in 5-second buckets of event time. Each window (5 min, 1 h, 24 h) keeps
running per-queue counts: a bucket is added as its events arrive and subtracted when it
leaves the window, so a request reads counts without scanning events. Quantiles are exact
(nearest rank): each window keeps its durations and queue waits sorted, inserting each new
sample and removing the samples of a bucket that leaves, so a quantile is one index. A
plot point's p95 is computed once and kept until a sample lands in its buckets. A window
covers whole buckets: the last ``window / 5`` of them.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from omniq_observe._summary import FAILED_TYPES, nearest_rank, quantile
from omniq_observe.models.event import FINISHED_TYPES, TaskEvent
from omniq_observe.pairing import History, Observation, TaskPairing

__all__ = ["BUCKET_SECONDS", "WINDOWS", "LiveFigures"]

BUCKET_SECONDS = 5.0
#: The windows the overview offers, by name: seconds.
WINDOWS = {"5m": 300.0, "1h": 3600.0, "24h": 86400.0}
_POINTS = 60  # points per plot, whatever the window


@dataclass
class _Bucket:
    """The samples of 5 seconds of event time."""

    counts: dict[str, collections.Counter[str]] = field(default_factory=dict)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    durations: dict[str, list[float]] = field(default_factory=dict)
    waits: dict[str, list[float]] = field(default_factory=dict)
    events: int = 0


Sorted = dict[str, list[float]]  # queue -> samples in ascending order


@dataclass
class _Window:
    """Running per-queue counts over the last ``size`` buckets, and their samples sorted.

    The sorted samples take each new value in place and drop each value whose bucket
    leaves; ``None`` means "rebuild from the buckets when next asked" (after the bulk load
    of history, where one sort is cheaper than many insertions).
    """

    size: int
    low: int  # the oldest bucket index inside the window
    counts: dict[str, collections.Counter[str]] = field(default_factory=dict)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    durations: Sorted | None = None
    waits: Sorted | None = None

    def add(self, queue: str, event_type: str, error_type: str | None) -> None:
        _count(self.counts, self.failures, queue, event_type, error_type)

    def subtract(self, bucket: _Bucket) -> None:
        for queue, counts in bucket.counts.items():
            self.counts[queue].subtract(counts)
        self.failures.subtract(bucket.failures)
        for samples, gone in ((self.durations, bucket.durations), (self.waits, bucket.waits)):
            if samples is None:
                continue
            for queue, values in gone.items():
                ordered = samples[queue]
                for value in values:
                    del ordered[bisect.bisect_left(ordered, value)]

    def clear(self, low: int) -> None:
        self.counts.clear()
        self.failures.clear()
        self.durations, self.waits = {}, {}
        self.low = low


def _count(
    counts: dict[str, collections.Counter[str]],
    failures: collections.Counter[str],
    queue: str,
    event_type: str,
    error_type: str | None,
) -> None:
    """Count one event of ``queue`` (and its error type, when it failed)."""
    per_type = counts.get(queue)
    if per_type is None:
        per_type = counts[queue] = collections.Counter()
    per_type[event_type] += 1
    if error_type is not None:
        failures[error_type] += 1


def _insert(samples: Sorted | None, queue: str, value: float) -> None:
    if samples is not None:
        bisect.insort(samples.setdefault(queue, []), value)


class LiveFigures:
    """Per-queue figures for the windows of :data:`WINDOWS`, fed one event at a time.

    Args:
        history: reads a task's stored events, for pairing events whose start came first.
        clock: returns the current time in epoch seconds.
        error_type: names the error type of a failed event.
    """

    def __init__(
        self,
        history: History | None,
        clock: Callable[[], float],
        error_type: Callable[[TaskEvent], str],
    ) -> None:
        self.pairing = TaskPairing(history, ttl=3600.0)
        self.clock = clock
        self.error_type = error_type
        self.version = 0  # bumped by every event counted
        self.newest: float | None = None
        self.running: dict[str, dict[str, float]] = {}  # queue -> task id -> start
        self._buckets: dict[int, _Bucket] = {}
        now_index = self._index(clock())
        self._windows = {
            name: _Window(size, now_index - size + 1)
            for name, size in ((n, int(s / BUCKET_SECONDS)) for n, s in WINDOWS.items())
        }
        self._cache: dict[str, tuple[int, int, Any]] = {}
        self._evicted_below = self._windows["24h"].low
        self._points: dict[tuple[int, int], tuple[int, dict[str, dict[str, float | None]]]] = {}
        self.bulk = True  # samples are sorted on demand until prepare() is called

    @staticmethod
    def _index(ts: float) -> int:
        return math.floor(ts / BUCKET_SECONDS)

    async def add(self, event: TaskEvent) -> Observation:
        """Pair and count one event."""
        obs = await self.pairing.observe(event)
        for each in obs.all():
            self.record(each)
        return obs

    def record(self, obs: Observation) -> None:
        """Count one observation (duplicates are ignored, as in ``stats``)."""
        if obs.duplicate:
            return
        event = obs.event
        ts = event.timestamp.timestamp()
        self._track_running(obs, ts)
        if self.newest is None or ts > self.newest:
            self.newest = ts
        index = self._index(ts)
        if index < self._windows["24h"].low:
            return  # older than every window
        self.version += 1
        queue, event_type = obs.queue, event.event_type
        error_type = self.error_type(event) if event_type in FAILED_TYPES else None
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        counted = obs.counted  # False: a decision about an event counted already
        if counted:
            bucket.events += 1
            _count(bucket.counts, bucket.failures, queue, event_type, error_type)
        wait = obs.queue_wait
        if wait is not None:
            bucket.waits.setdefault(queue, []).append(wait)
        closed = obs.closed
        duration = None
        if closed is not None and closed.status != "retried":
            duration = closed.duration
            bucket.durations.setdefault(queue, []).append(duration)
        for window in self._windows.values():
            if index >= window.low:
                if counted:
                    window.add(queue, event_type, error_type)
                if wait is not None:
                    _insert(window.waits, queue, wait)
                if duration is not None:
                    _insert(window.durations, queue, duration)

    def _track_running(self, obs: Observation, ts: float) -> None:
        if obs.opened:
            self.running.setdefault(obs.queue, {})[obs.event.task_id] = ts
        ended = [obs.closed] if obs.closed is not None else []
        for attempt in itertools.chain(ended, obs.expired):
            self.running.get(attempt.queue, {}).pop(attempt.task_id, None)

    def advance(self) -> int:
        """Move every window to the current time; return the current bucket index."""
        now_index = self._index(self.clock())
        for window in self._windows.values():
            low = now_index - window.size + 1
            if low - window.low > window.size:  # idle for longer than the window
                window.clear(low)
            while window.low < low:
                bucket = self._buckets.get(window.low)
                if bucket is not None:
                    window.subtract(bucket)
                window.low += 1
        oldest = self._windows["24h"].low
        if oldest != self._evicted_below:
            for index in [i for i in self._buckets if i < oldest]:
                del self._buckets[index]
            self._evicted_below = oldest
        return now_index

    def queues(self, window: str) -> list[dict[str, Any]]:
        """The overview rows of ``window`` (a key of :data:`WINDOWS`), by queue name."""
        rows: list[dict[str, Any]] = self._cached(("queues", window), lambda _: self._rows(window))
        return rows

    def series(self, window: str) -> dict[str, Any]:
        """The plots' data for ``window``: 60 points of time, per queue / error type."""
        series: dict[str, Any] = self._cached(
            ("series", window), lambda now_index: self._series(window, now_index)
        )
        return series

    def _cached(self, key: tuple[str, str], compute: Callable[[int], Any]) -> Any:
        now_index = self.advance()
        name = f"{key[0]}:{key[1]}"
        hit = self._cache.get(name)
        if hit is not None and hit[0] == self.version and hit[1] == now_index:
            return hit[2]
        value = compute(now_index)
        self._cache[name] = (self.version, now_index, value)
        return value

    def _in_window(self, window: _Window) -> Iterable[_Bucket]:
        low = window.low
        return (bucket for index, bucket in self._buckets.items() if index >= low)

    def _sorted(self, window: _Window) -> tuple[Sorted, Sorted]:
        """The window's samples in order, rebuilt from its buckets if they were dropped
        (kept from then on, unless a bulk load is still going on)."""
        if window.durations is None or window.waits is None:
            durations: dict[str, list[float]] = collections.defaultdict(list)
            waits: dict[str, list[float]] = collections.defaultdict(list)
            for bucket in self._in_window(window):
                for queue, values in bucket.durations.items():
                    durations[queue].extend(values)
                for queue, values in bucket.waits.items():
                    waits[queue].extend(values)
            built = ({q: sorted(v) for q, v in durations.items()},
                     {q: sorted(v) for q, v in waits.items()})
            if self.bulk:
                return built
            window.durations, window.waits = built
        return window.durations, window.waits

    def _rows(self, name: str) -> list[dict[str, Any]]:
        window = self._windows[name]
        seconds = WINDOWS[name]
        now = self.clock()
        durations, waits = self._sorted(window)
        rows = []
        for queue in sorted(set(window.counts) | set(self.running)):
            counts = window.counts.get(queue, collections.Counter())
            rows.append(_row(queue, counts, seconds, durations.get(queue, []),
                             waits.get(queue, []), self.running.get(queue, {}), now))
        return rows

    def prepare(self) -> None:
        """End the bulk load: sort every window's samples now, then keep them sorted."""
        self.bulk = False
        self.advance()
        for name, window in self._windows.items():
            self._sorted(window)
            self.series(name)  # fills the plot points' cache

    def _series(self, name: str, now_index: int) -> dict[str, Any]:
        window = self._windows[name]
        per_point = max(1, window.size // _POINTS)
        # points start on multiples of their width, so a finished point's buckets stay the
        # same (and its cached value valid) as time goes on; the last point is still filling
        first = (now_index // per_point - _POINTS + 1) * per_point
        step = per_point * BUCKET_SECONDS
        series: dict[str, dict[str, list[float | None]]] = {
            "done_per_second": {}, "failures": {}, "duration_p95": {}}
        for point in range(_POINTS):
            values = self._point(per_point, first + point * per_point)
            for kind, per_key in values.items():
                out = series[kind]
                for key, value in per_key.items():
                    out.setdefault(key, [None if kind == "duration_p95" else 0.0] * _POINTS)[
                        point] = value
        self._points = {k: v for k, v in self._points.items() if k[0] != per_point or k[1] >= first}
        times = [(first + i * per_point) * BUCKET_SECONDS for i in range(_POINTS)]
        return {"times": times, "step_seconds": step, **series}

    def _point(self, per_point: int, start: int) -> dict[str, dict[str, float | None]]:
        """One plot point (``per_point`` buckets from ``start``): done/s and p95 duration per
        queue, failures per error type; kept until an event lands in its buckets."""
        buckets = [b for b in map(self._buckets.get, range(start, start + per_point)) if b]
        size = sum(b.events for b in buckets)
        hit = self._points.get((per_point, start))
        if hit is not None and hit[0] == size:
            return hit[1]
        done: collections.Counter[str] = collections.Counter()
        failed: collections.Counter[str] = collections.Counter()
        samples: dict[str, list[float]] = collections.defaultdict(list)
        for bucket in buckets:
            for queue, counts in bucket.counts.items():
                done[queue] += counts["COMPLETED"]
            failed.update(bucket.failures)
            for queue, values in bucket.durations.items():
                samples[queue].extend(values)
        seconds = per_point * BUCKET_SECONDS
        value: dict[str, dict[str, float | None]] = {
            "done_per_second": {q: n / seconds for q, n in done.items() if n},
            "failures": {t: float(n) for t, n in failed.items() if n},
            "duration_p95": {q: quantile(v, 0.95) for q, v in samples.items()},
        }
        self._points[(per_point, start)] = (size, value)
        return value

    def failure_counts(self, window: str) -> dict[str, Any]:
        """FAILED + TIMEOUT events in ``window``: per queue and per error type."""
        counts = self._windows[window]
        self.advance()
        per_queue = {q: sum(c[t] for t in FAILED_TYPES) for q, c in sorted(counts.counts.items())}
        return {
            "total": sum(per_queue.values()),
            "by_queue": {q: n for q, n in per_queue.items() if n},
            "by_error_type": {t: n for t, n in sorted(counts.failures.items()) if n},
        }


def _row(
    queue: str,
    counts: collections.Counter[str],
    seconds: float,
    durations: list[float],  # sorted
    waits: list[float],  # sorted
    running: dict[str, float],
    now: float,
) -> dict[str, Any]:
    """One overview row, by the definitions of ``top`` (rates over the window)."""
    events = sum(counts.values())
    failed = sum(counts[t] for t in FAILED_TYPES)
    ended = sum(counts[t] for t in FINISHED_TYPES)
    oldest_task, oldest_age = None, None
    if running:
        oldest_task, start = min(running.items(), key=lambda item: item[1])
        oldest_age = max(0.0, now - start)
    return {
        "queue": queue,
        "events": events,
        "events_per_second": events / seconds,
        "running": len(running),
        "completed": counts["COMPLETED"],
        "completed_per_second": counts["COMPLETED"] / seconds,
        "failed": failed,
        "failed_per_second": failed / seconds,
        "success_ratio": None if ended == 0 else counts["COMPLETED"] / ended,
        "duration_seconds": {"p50": nearest_rank(durations, 0.5),
                             "p95": nearest_rank(durations, 0.95)},
        "queue_wait_seconds": {"p95": nearest_rank(waits, 0.95)},
        "oldest_running": None if oldest_task is None
        else {"task_id": oldest_task, "age_seconds": oldest_age},
    }
