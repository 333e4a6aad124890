"""Task pairing: which events belong together, for durations, queue wait and task spans.

:class:`TaskPairing` follows each task through its events and says, for every event,
what it completes: an ENQUEUED->STARTED queue wait, a STARTED->terminal attempt, a
duplicate delivery to ignore, or a start that will never finish. Every handler that needs
pairs (Prometheus, OpenTelemetry metrics, tracing) owns one.

Rules:

* The queue of a task comes from its ENQUEUED (``queue_name`` or ``queue``; "default" when
  it names none); later events inherit it. Without an ENQUEUED: the event's own details,
  then the task's history in storage, then "unknown".
* An ``event_id`` seen before (among the last ``dedupe_window``) is a duplicate delivery
  (``Observation.duplicate``). Ids are remembered by their 64-bit hash; a false match
  needs a hash collision within the window (odds ~1e-14 per event).
* Events may come out of order: a terminal event before its STARTED is looked up in
  storage history, else held until the STARTED comes; an ENQUEUED after its STARTED still
  yields the queue wait.
* After a processor restart a terminal event finds its STARTED in storage history; that
  STARTED, if delivered again later, then opens nothing. Such an attempt has
  ``was_open=False``: it was never reported as opened, so in-progress gauges must not
  count its end.
* Each attempt pairs on its own: RETRIED re-enqueues the task (the next queue wait runs
  from it), and RETRIED while an attempt is open closes it with status "retried".
* A start that never finishes expires ``ttl`` seconds (event time) after the task's last
  event (``Observation.expired``), checked every 1024 events, or whenever :meth:`expire`
  is called; expiry can come up to ``ttl/16`` late. A terminal whose start never comes
  expires likewise as status "no_start". A negative duration (clock skew) is recorded as
  0 and flagged.
* Memory: per tracked task, its id string plus ~75 bytes of table and typed arrays
  (:mod:`omniq_observe._task_table`); a finished task keeps nothing but an 8-byte expiry
  entry until its bucket passes. A million open tasks with UUID ids hold ~175 MiB
  resident (tests/test_pairing.py measures it in a fresh process).
* Speed: :meth:`TaskPairing.try_observe` pairs the common in-order events (ENQUEUED of a
  new task, STARTED, terminal, RETRIED) inline with one table probe; everything else
  takes the general path, which gives the same results.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from omniq_observe._semantics import queue_of
from omniq_observe._task_table import NAN, U64, TaskTable
from omniq_observe.models.event import TaskEvent

__all__ = ["UNKNOWN_QUEUE", "Attempt", "Observation", "TaskPairing"]

_TERMINAL_STATUS = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "TIMEOUT": "timeout",
    "CANCELLED": "cancelled",
}
_FINAL = frozenset({"COMPLETED", "CANCELLED"})  # a task that ends so is not retried
_MAX_INTERNED = 0xFFFF  # names are stored as unsigned 16-bit numbers
_MAX_ATTEMPT = 0xFFFF
_EXPIRY_EVERY = 1024
UNKNOWN_QUEUE = "unknown"
OVERFLOW = "__overflow__"

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
    was_open: bool = False  # an earlier Observation reported it opened (in progress)

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
    attempt: int | None = None  # the attempt number a STARTED opened
    unpaired: list[str] = field(default_factory=list)
    expired: list[Attempt] = field(default_factory=list)


def _ts(event: TaskEvent) -> float:
    return event.timestamp.timestamp()


def _attempt_number(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, _MAX_ATTEMPT)
    return default


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
        if not ttl > 0:
            msg = f"ttl must be a positive number of seconds, got {ttl!r}"
            raise ValueError(msg)
        self.history = history
        self.ttl = ttl
        self.dedupe_window = dedupe_window
        self.keep_context = keep_context
        self._table = TaskTable(ttl / 16 if math.isfinite(ttl) else 3600.0)
        self._names: list[str | None] = [None]  # interned queue/worker names; 0 = none
        self._name_ids: dict[str, int] = {}
        self._seen: set[int] = set()  # hashes of recent event ids
        self._seen_ring = array("q", bytes(8 * max(1, dedupe_window)))
        self._seen_next = 0
        self._consumed: dict[str, None] = {}  # STARTED ids paired from history (bounded)
        self._pending: dict[str, TaskEvent] = {}  # terminal events waiting for their STARTED
        self._looked_up: dict[str, None] = {}  # tasks whose history was read (bounded)
        self._contexts: dict[str, dict[str, str]] = {}
        self._clock = -math.inf
        self._since_expiry = 0

    # -- public ---------------------------------------------------------------------
    @property
    def open_attempts(self) -> int:
        """How many attempts are started and not yet ended."""
        start = self._table.t_start
        return sum(1 for slot in self._table.live_slots() if not math.isnan(start[slot]))

    @property
    def tracked_tasks(self) -> int:
        """How many tasks the pairing holds state for."""
        return len(self._table)

    def needs_history(self, event: TaskEvent) -> bool:
        """True when ``event`` can only be paired with the task's stored history.

        Cheap; sync handlers call :meth:`observe_now` when this is False and await
        :meth:`observe` otherwise (or use :meth:`try_observe`).
        """
        if self.history is None or hash(event.event_id) in self._seen:
            return False
        return self._needs_history(event, self._table.find(event.task_id))

    async def observe(self, event: TaskEvent) -> Observation:
        """Take one event, reading the task's history from storage if it needs to."""
        history = None
        if self.history is not None and self.needs_history(event):
            history = await self.history(event.task_id)
        return self.observe_now(event, history)

    def observe_now(self, event: TaskEvent, history: list[TaskEvent] | None = None) -> Observation:
        """Take one event without reading storage; ``history`` is the task's stored events
        when the caller fetched them."""
        if history is None:
            obs = self.try_observe(event)
            if obs is not None:
                return obs  # else it took nothing: pair it without the history
        return self._observe(event, history, self._table.find(event.task_id))

    def expire(self, now: float) -> list[Attempt]:
        """Drop tasks idle for ``ttl`` seconds before ``now``; return open attempts dropped.

        Held terminal events dropped here come back as attempts with status "no_start".
        """
        self._since_expiry = 0
        cutoff = now - self.ttl
        table = self._table
        expired: list[Attempt] = []
        while self._pending:
            task_id, event = next(iter(self._pending.items()))
            if _ts(event) > cutoff and len(self._pending) <= self.dedupe_window:
                break
            del self._pending[task_id]
            expired.append(
                Attempt(task_id, self._queue_name_of(task_id), 0, None, NAN, _ts(event),
                        "no_start", event)
            )
        for slot in list(table.due(cutoff)):
            owner = table.ids[slot]
            if owner is None:
                continue
            task_id = owner
            if not math.isnan(table.t_start[slot]):
                expired.append(self._attempt_of(task_id, slot, None, "expired", True))
            self._free_slot(task_id, slot)
        return expired

    # -- taking events: the common path, inlined ----------------------------------
    def try_observe(self, event: TaskEvent) -> Observation | None:
        """Take one event if that needs no storage read; else return None (and take
        nothing: the caller then awaits :meth:`observe`).

        The common in-order cases are paired right here with one table probe (an ENQUEUED
        of a new task, a STARTED or RETRIED of a task with a known queue and no open
        attempt, a terminal event closing the open attempt); anything else (a duplicate,
        out of order, recovery, a second start...) goes to the general path, with the same
        results.
        """
        event_id = event.event_id
        key = hash(event_id)
        seen = self._seen
        consumed = self._consumed
        if key in seen or (consumed and event_id in consumed):
            return self._try_general(event)
        task_id = event.task_id
        table = self._table
        keys, mask = table.keys, table.mask
        perturb = h = hash(task_id) & U64
        position = h & mask
        while True:  # TaskTable.find, inlined
            found = keys[position]
            if found is None:
                slot = -1
                break
            if found == task_id:
                slot = table.slots[position]
                break
            perturb >>= 5
            position = (position * 5 + perturb + 1) & mask
        kind = event.event_type
        names = self._names
        if slot >= 0:
            number = table.queue[slot]
            if not number:
                return self._try_general(event)
            t_start = table.t_start
            start = t_start[slot]
            if kind == "STARTED":
                pending = self._pending
                if start == start or (pending and task_id in pending):
                    return self._try_general(event)  # superseded, or its end came first
                ts = event.timestamp.timestamp()
                details = event.details
                attempts = table.attempt
                attempt = min(attempts[slot] + 1, _MAX_ATTEMPT)
                given = details.get("attempt")
                if given is not None:
                    attempt = _attempt_number(given, attempt)
                attempts[slot] = attempt
                worker = details.get("worker_id")
                if isinstance(worker, str):
                    table.worker[slot] = self._name_ids.get(worker) or self._intern(worker)
                else:
                    table.worker[slot] = 0
                obs = Observation(event, names[number] or UNKNOWN_QUEUE, False, None, True,
                                  None, attempt)
                t_enq = table.t_enq
                enq = t_enq[slot]
                if enq == enq:
                    wait = ts - enq
                    if wait < 0:
                        obs.unpaired.append("clock_skew")
                        wait = 0.0
                    obs.queue_wait = wait
                    t_enq[slot] = NAN
                t_start[slot] = ts
            elif kind in _TERMINAL_STATUS:
                if start != start:
                    return self._try_general(event)  # no open attempt: held or recovered
                ts = event.timestamp.timestamp()
                closed = Attempt(
                    task_id, names[number] or UNKNOWN_QUEUE, table.attempt[slot],
                    names[table.worker[slot]], start, ts, _TERMINAL_STATUS[kind], event,
                    self._contexts.get(task_id) if self._contexts else None, True,
                )
                obs = Observation(event, closed.queue, False, None, False, closed)
                if ts < start:
                    obs.unpaired.append("clock_skew")
                if kind in _FINAL:
                    table.remove(slot, position)
                    if self._contexts:
                        self._contexts.pop(task_id, None)
                else:
                    t_start[slot] = NAN
            elif kind == "RETRIED" and start != start:
                ts = event.timestamp.timestamp()
                obs = Observation(event, names[number] or UNKNOWN_QUEUE)
                table.t_enq[slot] = ts
            else:
                return self._try_general(event)
            touch = table.t_touch
            if ts > touch[slot]:
                touch[slot] = ts
        elif kind == "ENQUEUED":
            ts = event.timestamp.timestamp()
            details = event.details
            queue = details.get("queue_name")
            if not isinstance(queue, str) or not queue:
                queue = queue_of(details) or "default"
            slot = table.add(task_id, ts, position)
            table.queue[slot] = self._name_ids.get(queue) or self._intern(queue)
            table.t_enq[slot] = ts
            if self.keep_context and event.trace_context:
                self._contexts[task_id] = event.trace_context
            obs = Observation(event, queue)
        else:
            return self._try_general(event)
        # remember the event id (TaskPairing._remember, inlined)
        ring = self._seen_ring
        at = self._seen_next
        if len(seen) >= self.dedupe_window:
            seen.discard(ring[at])
        seen.add(key)
        ring[at] = key
        at += 1
        self._seen_next = 0 if at == len(ring) else at
        if ts > self._clock:
            self._clock = ts
        self._since_expiry += 1
        if self._since_expiry >= _EXPIRY_EVERY:
            obs.expired.extend(self.expire(self._clock))
        return obs

    def _try_general(self, event: TaskEvent) -> Observation | None:
        index = self._table.find(event.task_id)
        if (
            self.history is not None
            and hash(event.event_id) not in self._seen
            and self._needs_history(event, index)
        ):
            return None
        return self._observe(event, None, index)

    # -- the event kinds ------------------------------------------------------------
    def _needs_history(self, event: TaskEvent, index: int) -> bool:
        task_id = event.task_id
        kind = event.event_type
        if kind in _TERMINAL_STATUS and (index < 0 or math.isnan(self._table.t_start[index])):
            return task_id not in self._looked_up
        if kind == "ENQUEUED" or (index >= 0 and self._table.queue[index]):
            return False
        return queue_of(event.details) is None and task_id not in self._looked_up

    def _observe(
        self, event: TaskEvent, history: list[TaskEvent] | None, index: int
    ) -> Observation:
        event_id = event.event_id
        key = hash(event_id)
        if key in self._seen:
            return Observation(event, self._known_queue(event, index), duplicate=True)
        self._remember(key)
        if history is not None:
            looked_up = self._looked_up
            looked_up[event.task_id] = None
            if len(looked_up) > self.dedupe_window:
                del looked_up[next(iter(looked_up))]
        ts = event.timestamp.timestamp()
        if ts > self._clock:
            self._clock = ts
        kind = event.event_type
        if event_id in self._consumed:  # its pair was made from history already
            del self._consumed[event_id]
            obs = Observation(event, self._resolve_queue(event, ts, history, index)[0])
        elif kind == "STARTED":
            obs = self._started(event, ts, history, index)
        elif kind in _TERMINAL_STATUS:
            obs = self._terminal(event, ts, history, index)
        elif kind == "ENQUEUED":
            obs = self._enqueued(event, ts, index)
        elif kind == "RETRIED":
            obs = self._retried(event, ts, history, index)
        else:
            obs = Observation(event, self._resolve_queue(event, ts, history, index)[0])
        self._since_expiry += 1
        if self._since_expiry >= _EXPIRY_EVERY:
            obs.expired.extend(self.expire(self._clock))
        return obs

    def _enqueued(self, event: TaskEvent, ts: float, index: int) -> Observation:
        table = self._table
        queue = queue_of(event.details) or "default"
        index = self._touch_or_add(event.task_id, index, ts)
        table.queue[index] = self._intern(queue)
        if self.keep_context and event.trace_context:
            self._contexts[event.task_id] = event.trace_context
        obs = Observation(event, queue)
        start = table.t_start[index]
        if not math.isnan(start) and table.attempt[index] <= 1 and math.isnan(table.t_enq[index]):
            obs.queue_wait = self._wait(obs, start - ts)  # STARTED came first
        else:
            table.t_enq[index] = ts
        return obs

    def _started(
        self, event: TaskEvent, ts: float, history: list[TaskEvent] | None, index: int
    ) -> Observation:
        table = self._table
        task_id = event.task_id
        queue, index = self._resolve_queue(event, ts, history, index)
        obs = Observation(event, queue)
        if not math.isnan(table.t_start[index]):
            obs.unpaired.append("superseded")  # the previous attempt never ended
            obs.expired.append(self._attempt_of(task_id, index, None, "expired", True))
        details = event.details
        table.attempt[index] = _attempt_number(
            details.get("attempt"), min(table.attempt[index] + 1, _MAX_ATTEMPT)
        )
        worker = details.get("worker_id")
        table.worker[index] = self._intern(worker) if isinstance(worker, str) else 0
        enq = table.t_enq[index]
        if not math.isnan(enq):
            obs.queue_wait = self._wait(obs, ts - enq)
            table.t_enq[index] = NAN
        table.t_start[index] = ts
        obs.attempt = table.attempt[index]
        pending = self._pending.pop(task_id, None)
        if pending is not None:  # the end came before the start
            obs.closed = self._close(task_id, index, pending, obs, was_open=False)
        else:
            obs.opened = True
        return obs

    def _terminal(
        self, event: TaskEvent, ts: float, history: list[TaskEvent] | None, index: int
    ) -> Observation:
        table = self._table
        task_id = event.task_id
        queue, index = self._resolve_queue(event, ts, history, index)
        obs = Observation(event, queue)
        if not math.isnan(table.t_start[index]):
            obs.closed = self._close(task_id, index, event, obs, was_open=True)
            return obs
        start = self._start_from_history(event, history)
        if start is None:
            self._pending[task_id] = event  # wait for the STARTED
            return obs
        table.t_start[index] = _ts(start)
        table.attempt[index] = _attempt_number(
            start.details.get("attempt"), max(1, table.attempt[index])
        )
        worker = start.details.get("worker_id")
        table.worker[index] = self._intern(worker) if isinstance(worker, str) else 0
        obs.closed = self._close(task_id, index, event, obs, was_open=False)
        return obs

    def _retried(
        self, event: TaskEvent, ts: float, history: list[TaskEvent] | None, index: int
    ) -> Observation:
        table = self._table
        queue, index = self._resolve_queue(event, ts, history, index)
        obs = Observation(event, queue)
        if not math.isnan(table.t_start[index]):
            obs.closed = self._close(
                event.task_id, index, event, obs, status="retried", was_open=True
            )
        table.t_enq[index] = ts
        return obs

    # -- helpers --------------------------------------------------------------------
    def _close(
        self,
        task_id: str,
        index: int,
        end: TaskEvent,
        obs: Observation,
        status: str | None = None,
        *,
        was_open: bool,
    ) -> Attempt:
        status = status or _TERMINAL_STATUS[end.event_type]
        attempt = self._attempt_of(task_id, index, end, status, was_open)
        if attempt.skewed:
            obs.unpaired.append("clock_skew")
        self._table.t_start[index] = NAN
        if end.event_type in _FINAL:
            self._free_slot(task_id, index)
        return attempt

    def _attempt_of(
        self, task_id: str, index: int, end: TaskEvent | None, status: str, was_open: bool
    ) -> Attempt:
        table, names = self._table, self._names
        return Attempt(
            task_id=task_id,
            queue=names[table.queue[index]] or UNKNOWN_QUEUE,
            attempt=table.attempt[index],
            worker_id=names[table.worker[index]],
            start=table.t_start[index],
            end=None if end is None else _ts(end),
            status=status,
            end_event=end,
            context=self._contexts.get(task_id),
            was_open=was_open,
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
        if start is None or hash(start.event_id) in self._seen:
            return None
        consumed = self._consumed
        consumed[start.event_id] = None
        if len(consumed) > self.dedupe_window:
            del consumed[next(iter(consumed))]
        return start

    def _known_queue(self, event: TaskEvent, index: int) -> str:
        if index >= 0 and self._table.queue[index]:
            return self._names[self._table.queue[index]] or UNKNOWN_QUEUE
        return queue_of(event.details) or UNKNOWN_QUEUE

    def _queue_name_of(self, task_id: str) -> str:
        index = self._table.find(task_id)
        if index < 0:
            return UNKNOWN_QUEUE
        return self._names[self._table.queue[index]] or UNKNOWN_QUEUE

    def _resolve_queue(
        self, event: TaskEvent, ts: float, history: list[TaskEvent] | None, index: int
    ) -> tuple[str, int]:
        """The task's queue (remembered, else the event's details, else storage history)
        and its slot, created when the task was not tracked yet."""
        task_id = event.task_id
        table = self._table
        if index >= 0:
            if ts > table.t_touch[index]:
                table.t_touch[index] = ts
            number = table.queue[index]
            if number:
                return self._names[number] or UNKNOWN_QUEUE, index
        queue = queue_of(event.details)
        if queue is None and history is not None:
            for stored in history:
                if stored.event_type == "ENQUEUED":
                    queue = queue_of(stored.details) or "default"
                    if self.keep_context and stored.trace_context:
                        self._contexts[task_id] = stored.trace_context
                    break
        queue = queue or UNKNOWN_QUEUE
        if index < 0:
            index = table.add(task_id, ts)
        table.queue[index] = self._intern(queue)
        return queue, index

    def _touch_or_add(self, task_id: str, index: int, ts: float) -> int:
        table = self._table
        if index < 0:
            return table.add(task_id, ts)
        if ts > table.t_touch[index]:
            table.t_touch[index] = ts
        return index

    def _free_slot(self, task_id: str, index: int) -> None:
        self._table.remove(index)
        if self._contexts:
            self._contexts.pop(task_id, None)

    def _intern(self, name: str) -> int:
        index = self._name_ids.get(name)
        if index is None:
            if len(self._names) >= _MAX_INTERNED:
                index = self._name_ids.get(OVERFLOW)
                if index is not None:
                    return index
                name = OVERFLOW
            index = len(self._names)
            self._names.append(name)
            self._name_ids[name] = index
        return index

    def _remember(self, key: int) -> None:
        seen, ring = self._seen, self._seen_ring
        position = self._seen_next
        if len(seen) >= self.dedupe_window:
            seen.discard(ring[position])
        seen.add(key)
        ring[position] = key
        self._seen_next = (position + 1) % len(ring)
