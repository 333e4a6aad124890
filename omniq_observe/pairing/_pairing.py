"""The public :class:`TaskPairing` and its fast path, the one hot path of pairing: the
common in-order cases in a few steps, checked against the careful path by
``tests/test_pairing.py``."""

from __future__ import annotations

import math

from omniq_observe._details import queue_of
from omniq_observe.models.event import FINAL_TYPES, TERMINAL_STATUS, TaskEvent
from omniq_observe.pairing._log import stand_in
from omniq_observe.pairing._state import PairingState
from omniq_observe.pairing._table import NAN, Fields
from omniq_observe.pairing._types import (
    _EXPIRY_EVERY,
    _MAX_ATTEMPT,
    UNKNOWN_QUEUE,
    Attempt,
    Observation,
    compact_context,
    due_time,
)

__all__ = ["TaskPairing"]

# What a fast-path step made of an event: its observation, and the task's fields after it
# (None: the task ended).
_Step = tuple[Observation, "Fields | None"]


class TaskPairing(PairingState):
    """Pairs task events by event time; see :mod:`omniq_observe.pairing` for the rules.

    Args:
        history: an async function returning a task's stored events in storage order
            (usually ``storage.task_history``); ``None`` disables reading storage.
        ttl: seconds (event time) after a task's last event that it is given up.
        dedupe_window: how many recent event ids are remembered to spot duplicates.
        keep_context: keep each ENQUEUED's trace context for the attempts (tracing).
        reorder_window: seconds of event time an event may arrive late (relative to the
            newest event seen) and still pair exactly.

    Raises:
        ConfigurationError: ``ttl``, ``dedupe_window`` or ``reorder_window`` is out of
            range (a ``ValueError`` too).
    """

    # -- public ---------------------------------------------------------------------
    @property
    def open_attempts(self) -> int:
        """How many attempts are started and not yet ended (or given up)."""
        if self._unsettled:
            self._settle()
        start = self._table.t_start
        table = sum(1 for slot in self._table.live_slots() if not math.isnan(start[slot]))
        return table + sum(len(log.opened) for log in self._logs.values())

    @property
    def tracked_tasks(self) -> int:
        """How many tasks the pairing holds state for."""
        return len(self._table) + len(self._unsettled) + len(self._logs)

    def needs_history(self, event: TaskEvent) -> bool:
        """True when ``event`` can only be paired exactly with the task's stored history.

        Cheap; sync handlers call :meth:`observe_now` when this is False and await
        :meth:`observe` otherwise (or use :meth:`try_observe`).
        """
        if self.history is None or hash(event.event_id) in self._seen:
            return False
        if self._unsettled:
            self._settle()
        return self._needs_history(event, self._table.find(event.task_id))

    async def observe(self, event: TaskEvent) -> Observation:
        """Take one event, reading the task's history from storage if it needs to."""
        obs = self.try_observe(event)
        if obs is not None:
            return obs
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
        if self._unsettled:
            self._settle()
        return self._observe(event, history, self._table.find(event.task_id))

    def expire(self, now: float, current: TaskEvent | None = None) -> list[Observation]:
        """Give up tasks idle for ``ttl`` seconds before ``now``: their open attempts
        (``expired``) and queue entries end; what waited for the window is decided.

        ``current``: the event being handled, which the observations name (else a stand-in).
        """
        self._since_expiry = 0
        if self._unsettled:
            self._settle()
        cutoff = now - self.ttl
        table = self._table
        out: list[Observation] = []
        for slot in list(table.due(cutoff)):
            task_id = table.ids[slot]
            if task_id is None:
                continue
            started, queued = not math.isnan(table.t_start[slot]), not math.isnan(table.t_enq[slot])
            if started or queued:
                event = current or stand_in(task_id, now)
                obs = Observation(event, self._names[table.queue[slot]] or UNKNOWN_QUEUE,
                                  waiting=-1 if queued else 0, counted=False)
                if started:
                    obs.expired.append(self._attempt_of(task_id, slot, "expired"))
                out.append(obs)
            table.remove(slot)
        out.extend(self._expire_logs(cutoff, current))
        return out

    # -- taking events: the fast path ------------------------------------------------
    def try_observe(self, event: TaskEvent) -> Observation | None:
        """Take one event if that needs no storage read; else return None (and take
        nothing: the caller then awaits :meth:`observe`).

        The common in-order cases are paired right here with one lookup: an ENQUEUED of a
        new task, a STARTED (of the next attempt number) or RETRIED of a queued task, a
        terminal event closing the open attempt, each no older than the task's last event.
        Anything else (a duplicate, out of order, ambiguous, recovery...) takes the careful
        path, which gives the same results (``tests/test_pairing.py`` compares them).
        """
        key = hash(event.event_id)
        task_id = event.task_id
        if key in self._seen or (self._logs and task_id in self._logs):
            return self._try_general(event)
        ts = event.timestamp.timestamp()
        state = self._unsettled.get(task_id)
        slot = probe = -1
        if state is None and self._table.used:
            probe = self._table.locate(task_id)
            if probe >= 0:
                slot = self._table.slots[probe]
                state = self._table.row(slot)
        kind = event.event_type
        if state is None:
            step = self._fast_new(event, kind, ts)
        elif ts < state[4] or not state[1]:
            step = None  # out of order for its task, or its queue is not known
        elif kind == "STARTED":
            step = self._fast_start(event, ts, state)
        elif kind in TERMINAL_STATUS:
            step = self._fast_end(event, kind, ts, state)
        elif kind == "RETRIED":
            step = self._fast_retry(event, ts, state)
        else:
            step = None
        if step is None:
            return self._try_general(event)
        obs, after = step
        if slot >= 0:
            self._table.update(slot, probe, after)
        elif after is None:
            del self._unsettled[task_id]
        else:
            self._unsettled[task_id] = after
        # taken: what _remember and _after do, inlined (the bench shows it pays)
        order = self._seen_order
        if len(order) >= self._seen_limit:
            self._seen.discard(order.popleft())
        order.append(key)
        self._seen.add(key)
        if ts > self._clock:
            self._clock = ts
            held = self._held
            if held and held[0][0] <= ts - self.reorder_window:
                obs.released.extend(self.release(ts))
        self._since_expiry += 1
        if self._since_expiry >= _EXPIRY_EVERY:
            self._expire_into(obs)
        return obs

    def _fast_new(self, event: TaskEvent, kind: str, ts: float) -> _Step | None:
        """An ENQUEUED of a task not tracked, or a STARTED naming its queue (an ENQUEUED
        coming later still gives the queue wait); None for anything else, or when the
        event is late, or may be of a task begun before a restart."""
        if ts < self._clock - self.reorder_window or self._clock < self._recovering_until:
            return None
        details = event.details
        if kind == "STARTED":
            queue = queue_of(details)
            if queue is None:
                return None
            given = details.get("attempt")
            attempt = given if type(given) is int and 0 < given <= _MAX_ATTEMPT else 1
            obs = Observation(event, queue, False, None, True, None, attempt)
            name = details.get("worker_id")
            worker = self._intern(name) if isinstance(name, str) else 0
            return obs, (ts, self._intern(queue), NAN, ts, ts, attempt, worker, None)
        if kind != "ENQUEUED":
            return None
        queue = details.get("queue_name")
        if not isinstance(queue, str) or not queue:
            queue = queue_of(details) or "default"
        context = (
            compact_context(event.trace_context)
            if self._keep_context and event.trace_context else None
        )
        enq = due_time(details, ts) if "eta" in details else ts
        obs = Observation(event, queue, False, None, False, None, None, 1)
        return obs, (ts, self._name_ids.get(queue) or self._intern(queue), enq, NAN, ts, 0, 0,
                     context)

    def _fast_start(self, event: TaskEvent, ts: float, state: Fields) -> _Step | None:
        """The next attempt of a queued task starts (None: superseding, not queued, or an
        attempt number that skips one)."""
        added, queue_id, enq, start, _touch, attempt, _worker, context = state
        given = event.details.get("attempt")
        if start == start or enq != enq or (given is not None and given != attempt + 1):
            return None
        attempt = attempt + 1 if attempt < _MAX_ATTEMPT else attempt
        wait = ts - enq
        obs = Observation(event, self._names[queue_id] or UNKNOWN_QUEUE, False,
                          wait if wait > 0 else 0.0, True, None, attempt, -1)
        name = event.details.get("worker_id")
        worker = (self._name_ids.get(name) or self._intern(name)) if isinstance(name, str) else 0
        return obs, (added, queue_id, NAN, ts, ts, attempt, worker, context)

    def _fast_end(self, event: TaskEvent, kind: str, ts: float, state: Fields) -> _Step | None:
        """A terminal event ends the open attempt (None: no attempt open, or another's)."""
        added, queue_id, _enq, start, _touch, attempt, worker, context = state
        given = event.details.get("attempt")
        if start != start or (given is not None and given != attempt):
            return None
        names = self._names
        queue = names[queue_id] or UNKNOWN_QUEUE
        obs = Observation(event, queue, False, None, False, Attempt(
            event.task_id, queue, attempt, names[worker], start, ts, TERMINAL_STATUS[kind],
            event, context, True,
        ))
        if kind in FINAL_TYPES:
            return obs, None
        return obs, (added, queue_id, NAN, NAN, ts, attempt, worker, context)

    def _fast_retry(self, event: TaskEvent, ts: float, state: Fields) -> _Step | None:
        """A RETRIED re-enqueues a task whose attempt ended (None: an attempt is open, which
        the RETRIED ends, or the task is queued already: an attempt in between is missing)."""
        added, queue_id, enq, start, _touch, attempt, worker, context = state
        if start == start or enq == enq:
            return None
        details = event.details
        enq = due_time(details, ts) if "eta" in details else ts
        obs = Observation(event, self._names[queue_id] or UNKNOWN_QUEUE, False, None, False,
                          None, None, 1)
        return obs, (added, queue_id, enq, start, ts, attempt, worker, context)

    def _try_general(self, event: TaskEvent) -> Observation | None:
        if self._unsettled:
            self._settle()
        slot = self._table.find(event.task_id)
        if (
            self.history is not None
            and hash(event.event_id) not in self._seen
            and self._needs_history(event, slot)
        ):
            return None
        return self._observe(event, None, slot)

