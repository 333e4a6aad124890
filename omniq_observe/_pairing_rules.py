"""The general pairing rules of :mod:`omniq_observe._pairing`, for every case.

:class:`PairingRules` holds the pairing state (the task table, interned names, the
dedupe ring, held terminal events) and pairs any event, in order or not, with or without
the task's stored history. :class:`~omniq_observe._pairing.TaskPairing` adds the public
API and its inlined fast path for the common in-order events, which gives the same
results.
"""

from __future__ import annotations

import math
from collections import deque

from omniq_observe._pairing_types import (
    _EXPIRY_EVERY,
    _FINAL,
    _MAX_ATTEMPT,
    _MAX_INTERNED,
    _TERMINAL_STATUS,
    OVERFLOW,
    UNKNOWN_QUEUE,
    Attempt,
    History,
    Observation,
    _attempt_number,
    _ts,
    _Young,
)
from omniq_observe._semantics import queue_of
from omniq_observe._task_table import NAN, TaskTable
from omniq_observe.models.event import TaskEvent

__all__ = ["PairingRules"]


class PairingRules:
    """Pairing state and the general path; see :class:`~omniq_observe._pairing.TaskPairing`."""

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
        # Tasks enqueued since the last _settle, oldest first: the fast path keeps a new
        # task here (a dict entry costs a fraction of a table slot's), so that a task that
        # ends before the next settle never touches the table.
        self._young: dict[str, _Young] = {}
        self._names: list[str | None] = [None]  # interned queue/worker names; 0 = none
        self._name_ids: dict[str, int] = {}
        self._seen: set[int] = set()  # hashes of recent event ids
        self._seen_order: deque[int] = deque()  # the same, oldest first
        self._seen_limit = max(1, dedupe_window)
        self._consumed: dict[str, None] = {}  # STARTED ids paired from history (bounded)
        self._pending: dict[str, TaskEvent] = {}  # terminal events waiting for their STARTED
        self._looked_up: dict[str, None] = {}  # tasks whose history was read (bounded)
        self._contexts: dict[str, dict[str, str]] = {}
        self._clock = -math.inf
        self._since_expiry = 0


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

    def _settle(self) -> None:
        """Move the young tasks into the table, oldest first.

        Called before anything but the fast path reads the table, and before anything adds
        to it: the table then holds (and expiry visits) every task in the order the tasks
        came, as if each had been added to the table at its ENQUEUED.
        """
        table, contexts = self._table, self._contexts
        for task_id, state in self._young.items():
            added, queue, enq, start, touch, attempt, worker, context = state
            slot = table.add(task_id, added)
            table.queue[slot] = queue
            table.t_enq[slot] = enq
            table.t_start[slot] = start
            table.t_touch[slot] = touch
            table.attempt[slot] = attempt
            table.worker[slot] = worker
            if context is not None:
                contexts[task_id] = context
        self._young.clear()

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
        order = self._seen_order
        if len(order) >= self._seen_limit:
            self._seen.discard(order.popleft())
        order.append(key)
        self._seen.add(key)

    def expire(self, now: float) -> list[Attempt]:
        """Drop idle tasks; defined by :class:`~omniq_observe._pairing.TaskPairing`."""
        raise NotImplementedError
