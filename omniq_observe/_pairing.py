"""Task pairing: which events belong together, for durations, queue wait and task spans.

:class:`TaskPairing` follows each task through its events and says, for every event,
what it completes: an ENQUEUED->STARTED queue wait, a STARTED->terminal attempt, a
duplicate delivery to ignore, or a start that will never finish. Every handler that needs
pairs (Prometheus, OpenTelemetry metrics, tracing) owns one.

Rules:

* The queue of a task comes from its ENQUEUED (``queue_name`` or ``queue``; "default" when
  it names none); later events inherit it. Without an ENQUEUED: the event's own details,
  then the task's history in storage, then "unknown".
* An ``event_id`` seen before is a duplicate delivery (``Observation.duplicate``).
* Events may come out of order: a terminal event before its STARTED is looked up in
  storage history, else held until the STARTED comes; an ENQUEUED after its STARTED still
  yields the queue wait.
* After a processor restart a terminal event finds its STARTED in storage history; that
  STARTED, if delivered again later, then opens nothing.
* Each attempt pairs on its own: RETRIED re-enqueues the task (the next queue wait runs
  from it), and RETRIED while an attempt is open closes it with status "retried".
* A start that never finishes expires ``ttl`` seconds (event time) after the task's last
  event (``Observation.expired``); a terminal whose start never comes expires likewise as
  reason "no_start". A negative duration (clock skew) is recorded as 0 and flagged.
* Memory: per open task, slots in typed arrays plus one dict entry (~160 bytes), so a
  million open tasks stay well under 200 MB.
"""

from __future__ import annotations

import collections
import math
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from omniq_observe._semantics import queue_of
from omniq_observe.models.event import TaskEvent

__all__ = ["Attempt", "Observation", "TaskPairing"]

_NAN = math.nan
_TERMINAL_STATUS = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "TIMEOUT": "timeout",
    "CANCELLED": "cancelled",
}
_FINAL = frozenset({"COMPLETED", "CANCELLED"})  # a task that ends so is not retried
_MAX_INTERNED = 100_000
UNKNOWN_QUEUE = "unknown"

History = Callable[[str], Awaitable[list[TaskEvent]]]


@dataclass(slots=True)
class Attempt:
    """One STARTED paired with the event that ended it (or with nothing, when it expired)."""

    task_id: str
    queue: str
    attempt: int
    worker_id: str | None
    start: float  # epoch seconds, exact to the microsecond
    end: float | None
    status: str  # completed, failed, timeout, cancelled, retried; "expired" when it never ended
    end_event: TaskEvent | None = None
    context: dict[str, str] | None = None  # the ENQUEUED event's trace context, if kept

    @property
    def duration(self) -> float:
        """Seconds from start to end, never negative (clock skew gives 0)."""
        return 0.0 if self.end is None else max(0.0, self.end - self.start)

    @property
    def skewed(self) -> bool:
        """True when the end came before the start by the clocks."""
        return self.end is not None and self.end < self.start


@dataclass(slots=True)
class Observation:
    """What one event completes."""

    event: TaskEvent
    queue: str
    duplicate: bool = False
    queue_wait: float | None = None
    opened: bool = False  # an attempt started and is now in progress
    closed: Attempt | None = None
    unpaired: list[str] = field(default_factory=list)
    expired: list[Attempt] = field(default_factory=list)


def _ts(event: TaskEvent) -> float:
    return event.timestamp.timestamp()


class TaskPairing:
    """Pairs task events; see the module docstring for the rules.

    Args:
        history: an async function returning a task's stored events (usually
            ``storage.task_history``); ``None`` disables recovery from storage.
        ttl: seconds (event time) after a task's last event that its open attempt expires.
        dedupe_window: how many recent event ids are remembered to spot duplicates.
        keep_context: keep each ENQUEUED's trace context for the attempts (tracing).
    """

    def __init__(
        self,
        history: History | None = None,
        *,
        ttl: float = 3600.0,
        dedupe_window: int = 100_000,
        keep_context: bool = False,
    ) -> None:
        self.history = history
        self.ttl = ttl
        self.dedupe_window = dedupe_window
        self.keep_context = keep_context
        self._slot: dict[str, int] = {}
        self._free = array("q")
        self._t_enq = array("d")
        self._t_start = array("d")
        self._t_touch = array("d")
        self._attempt = array("i")
        self._queue = array("i")
        self._worker = array("i")
        self._names: list[str | None] = [None]  # interned queue/worker names; 0 = none
        self._name_ids: dict[str, int] = {}
        self._order: collections.deque[str] = collections.deque()  # task ids by activity
        self._seen: set[str] = set()
        self._seen_order: collections.deque[str] = collections.deque()
        self._consumed: set[str] = set()  # STARTED ids paired from history
        self._pending: dict[str, TaskEvent] = {}  # terminal events waiting for their STARTED
        self._looked_up: dict[str, None] = {}  # tasks whose history was read (bounded)
        self._contexts: dict[str, dict[str, str]] = {}
        self._clock = -math.inf
        self._since_expiry = 0

    # -- public ---------------------------------------------------------------------
    @property
    def open_attempts(self) -> int:
        """How many attempts are started and not yet ended."""
        return sum(1 for i in self._slot.values() if not math.isnan(self._t_start[i]))

    @property
    def tracked_tasks(self) -> int:
        """How many tasks the pairing holds state for."""
        return len(self._slot)

    def needs_history(self, event: TaskEvent) -> bool:
        """True when ``event`` can only be paired with the task's stored history.

        Cheap; sync handlers call :meth:`observe_now` when this is False and await
        :meth:`observe` otherwise.
        """
        if self.history is None or event.event_id in self._seen:
            return False
        task_id = event.task_id
        index = self._slot.get(task_id)
        kind = event.event_type
        if kind in _TERMINAL_STATUS and (index is None or math.isnan(self._t_start[index])):
            return task_id not in self._looked_up
        if kind == "ENQUEUED" or (index is not None and self._queue[index]):
            return False
        return queue_of(event.details) is None and task_id not in self._looked_up

    async def observe(self, event: TaskEvent) -> Observation:
        """Take one event, reading the task's history from storage if it needs to."""
        history = None
        if self.history is not None and self.needs_history(event):
            history = await self.history(event.task_id)
        return self.observe_now(event, history)

    def observe_now(self, event: TaskEvent, history: list[TaskEvent] | None = None) -> Observation:
        """Take one event without reading storage; ``history`` is the task's stored events
        when the caller fetched them."""
        event_id = event.event_id
        if event_id in self._seen:
            return Observation(event, self._known_queue(event), duplicate=True)
        self._remember(event_id)
        if history is not None:
            self._looked_up[event.task_id] = None
            if len(self._looked_up) > self.dedupe_window:
                del self._looked_up[next(iter(self._looked_up))]
        ts = event.timestamp.timestamp()
        if ts > self._clock:
            self._clock = ts
        kind = event.event_type
        if event_id in self._consumed:  # its pair was made from history already
            self._consumed.discard(event_id)
            return Observation(event, self._resolve_queue(event, ts, history))
        if kind == "ENQUEUED":
            obs = self._enqueued(event, ts)
        elif kind == "STARTED":
            obs = self._started(event, ts, history)
        elif kind in _TERMINAL_STATUS:
            obs = self._terminal(event, ts, history)
        elif kind == "RETRIED":
            obs = self._retried(event, ts, history)
        else:
            obs = Observation(event, self._resolve_queue(event, ts, history))
        self._since_expiry += 1
        if self._since_expiry >= 1024:
            obs.expired.extend(self.expire(self._clock))
        return obs

    def expire(self, now: float) -> list[Attempt]:
        """Drop tasks idle for ``ttl`` seconds before ``now``; return open attempts dropped.

        Held terminal events dropped here come back as attempts with status "no_start".
        """
        self._since_expiry = 0
        cutoff = now - self.ttl
        expired: list[Attempt] = []
        order, slots, touch = self._order, self._slot, self._t_touch
        while order:
            task_id = order[0]
            index = slots.get(task_id)
            if index is not None and touch[index] > cutoff:
                break
            order.popleft()
            if index is None or touch[index] > cutoff:
                continue
            if not math.isnan(self._t_start[index]):
                expired.append(self._attempt_of(task_id, index, None, "expired"))
            self._free_slot(task_id, index)
        for task_id, event in list(self._pending.items()):
            if _ts(event) <= cutoff:
                del self._pending[task_id]
                expired.append(
                    Attempt(task_id, self._queue_name_of(task_id), 0, None, _NAN, _ts(event),
                            "no_start", event)
                )
        return expired

    # -- event kinds ----------------------------------------------------------------
    def _enqueued(self, event: TaskEvent, ts: float) -> Observation:
        queue = queue_of(event.details) or "default"
        index = self._ensure_slot(event.task_id, ts)
        self._queue[index] = self._intern(queue)
        if self.keep_context and event.trace_context:
            self._contexts[event.task_id] = event.trace_context
        obs = Observation(event, queue)
        start = self._t_start[index]
        if not math.isnan(start) and self._attempt[index] <= 1 and math.isnan(self._t_enq[index]):
            obs.queue_wait = self._wait(obs, start - ts)  # STARTED came first
        else:
            self._t_enq[index] = ts
        return obs

    def _started(self, event: TaskEvent, ts: float, history: list[TaskEvent] | None) -> Observation:
        task_id = event.task_id
        queue = self._resolve_queue(event, ts, history)
        index = self._ensure_slot(task_id, ts)
        obs = Observation(event, queue)
        if not math.isnan(self._t_start[index]):
            obs.unpaired.append("superseded")  # the previous attempt never ended
            obs.expired.append(self._attempt_of(task_id, index, None, "expired"))
        details = event.details
        attempt = details.get("attempt")
        self._attempt[index] = (
            attempt if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 0
            else self._attempt[index] + 1
        )
        worker = details.get("worker_id")
        self._worker[index] = self._intern(worker) if isinstance(worker, str) else 0
        enq = self._t_enq[index]
        if not math.isnan(enq):
            obs.queue_wait = self._wait(obs, ts - enq)
            self._t_enq[index] = _NAN
        self._t_start[index] = ts
        pending = self._pending.pop(task_id, None)
        if pending is not None:  # the end came before the start
            obs.closed = self._close(task_id, index, pending, obs)
        else:
            obs.opened = True
        return obs

    def _terminal(self, event: TaskEvent, ts: float, history: list[TaskEvent] | None) -> Observation:
        task_id = event.task_id
        queue = self._resolve_queue(event, ts, history)
        obs = Observation(event, queue)
        index = self._slot.get(task_id)
        if index is not None and not math.isnan(self._t_start[index]):
            self._touch(task_id, index, ts)
            obs.closed = self._close(task_id, index, event, obs)
            return obs
        start = self._start_from_history(event, history)
        if start is None:
            self._pending[task_id] = event  # wait for the STARTED
            return obs
        index = self._ensure_slot(task_id, ts)
        self._t_start[index] = _ts(start)
        attempt = start.details.get("attempt")
        self._attempt[index] = attempt if isinstance(attempt, int) and attempt > 0 else max(
            1, self._attempt[index]
        )
        worker = start.details.get("worker_id")
        self._worker[index] = self._intern(worker) if isinstance(worker, str) else 0
        obs.closed = self._close(task_id, index, event, obs)
        return obs

    def _retried(self, event: TaskEvent, ts: float, history: list[TaskEvent] | None) -> Observation:
        task_id = event.task_id
        queue = self._resolve_queue(event, ts, history)
        index = self._ensure_slot(task_id, ts)
        obs = Observation(event, queue)
        if not math.isnan(self._t_start[index]):
            obs.closed = self._close(task_id, index, event, obs, status="retried")
        self._t_enq[index] = ts
        return obs

    # -- helpers --------------------------------------------------------------------
    def _close(
        self,
        task_id: str,
        index: int,
        end: TaskEvent,
        obs: Observation,
        status: str | None = None,
    ) -> Attempt:
        attempt = self._attempt_of(task_id, index, end, status or _TERMINAL_STATUS[end.event_type])
        if attempt.skewed:
            obs.unpaired.append("clock_skew")
        self._t_start[index] = _NAN
        if end.event_type in _FINAL:
            self._free_slot(task_id, index)
        return attempt

    def _attempt_of(self, task_id: str, index: int, end: TaskEvent | None, status: str) -> Attempt:
        return Attempt(
            task_id=task_id,
            queue=self._names[self._queue[index]] or UNKNOWN_QUEUE,
            attempt=self._attempt[index],
            worker_id=self._names[self._worker[index]],
            start=self._t_start[index],
            end=None if end is None else _ts(end),
            status=status,
            end_event=end,
            context=self._contexts.get(task_id),
        )

    def _wait(self, obs: Observation, seconds: float) -> float:
        if seconds < 0:
            obs.unpaired.append("clock_skew")
            return 0.0
        return seconds

    def _start_from_history(
        self, end: TaskEvent, history: list[TaskEvent] | None
    ) -> TaskEvent | None:
        """Find the STARTED that ``end`` closes among the task's stored events."""
        if history is None:
            return None
        start: TaskEvent | None = None
        for stored in history:
            if stored.event_id == end.event_id:
                break
            if stored.event_type == "STARTED":
                start = stored
            elif stored.event_type in _TERMINAL_STATUS or stored.event_type == "RETRIED":
                start = None
        if start is None or start.event_id in self._seen:
            return None
        self._consumed.add(start.event_id)
        return start

    def _known_queue(self, event: TaskEvent) -> str:
        index = self._slot.get(event.task_id)
        if index is not None and self._queue[index]:
            return self._names[self._queue[index]] or UNKNOWN_QUEUE
        return queue_of(event.details) or UNKNOWN_QUEUE

    def _queue_name_of(self, task_id: str) -> str:
        index = self._slot.get(task_id)
        return (self._names[self._queue[index]] or UNKNOWN_QUEUE) if index is not None else (
            UNKNOWN_QUEUE
        )

    def _resolve_queue(
        self, event: TaskEvent, ts: float, history: list[TaskEvent] | None
    ) -> str:
        """The task's queue: remembered, else the event's details, else storage history."""
        task_id = event.task_id
        index = self._slot.get(task_id)
        if index is not None and self._queue[index]:
            self._touch(task_id, index, ts)
            return self._names[self._queue[index]] or UNKNOWN_QUEUE
        queue = queue_of(event.details)
        if queue is None and history is not None:
            for stored in history:
                if stored.event_type == "ENQUEUED":
                    queue = queue_of(stored.details) or "default"
                    if self.keep_context and stored.trace_context:
                        self._contexts[task_id] = stored.trace_context
                    break
        queue = queue or UNKNOWN_QUEUE
        index = self._ensure_slot(task_id, ts)
        self._queue[index] = self._intern(queue)
        return queue

    def _ensure_slot(self, task_id: str, ts: float) -> int:
        index = self._slot.get(task_id)
        if index is None:
            if self._free:
                index = self._free.pop()
                self._t_enq[index] = self._t_start[index] = _NAN
                self._attempt[index] = self._queue[index] = self._worker[index] = 0
                self._t_touch[index] = ts
            else:
                index = len(self._t_touch)
                self._t_enq.append(_NAN)
                self._t_start.append(_NAN)
                self._t_touch.append(ts)
                self._attempt.append(0)
                self._queue.append(0)
                self._worker.append(0)
            self._slot[task_id] = index
            self._order.append(task_id)
        else:
            self._touch(task_id, index, ts)
        return index

    def _touch(self, task_id: str, index: int, ts: float) -> None:
        if ts > self._t_touch[index]:
            self._t_touch[index] = ts
            self._order.append(task_id)

    def _free_slot(self, task_id: str, index: int) -> None:
        del self._slot[task_id]
        self._free.append(index)
        self._contexts.pop(task_id, None)

    def _intern(self, name: str) -> int:
        index = self._name_ids.get(name)
        if index is None:
            if len(self._names) >= _MAX_INTERNED:
                name = "__overflow__"
                index = self._name_ids.get(name)
                if index is not None:
                    return index
            index = len(self._names)
            self._names.append(name)
            self._name_ids[name] = index
        return index

    def _remember(self, event_id: str) -> None:
        self._seen.add(event_id)
        self._seen_order.append(event_id)
        if len(self._seen_order) > self.dedupe_window:
            self._seen.discard(self._seen_order.popleft())
