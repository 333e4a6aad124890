"""The public :class:`TaskPairing` and its fast path (the only hand-inlined pairing code)."""

from __future__ import annotations

import math

from omniq_observe._details import queue_of
from omniq_observe.models.event import FINAL_TYPES, TERMINAL_STATUS, TaskEvent
from omniq_observe.pairing._log import stand_in
from omniq_observe.pairing._state import PairingState
from omniq_observe.pairing._table import NAN
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
        ValueError: ``ttl`` or ``reorder_window`` is out of range.
    """

    # -- public ---------------------------------------------------------------------
    @property
    def open_attempts(self) -> int:
        """How many attempts are started and not yet ended (or given up)."""
        if self._young:
            self._settle()
        start = self._table.t_start
        table = sum(1 for slot in self._table.live_slots() if not math.isnan(start[slot]))
        return table + sum(len(log.opened) for log in self._logs.values())

    @property
    def tracked_tasks(self) -> int:
        """How many tasks the pairing holds state for."""
        return len(self._table) + len(self._young) + len(self._logs)

    def needs_history(self, event: TaskEvent) -> bool:
        """True when ``event`` can only be paired exactly with the task's stored history.

        Cheap; sync handlers call :meth:`observe_now` when this is False and await
        :meth:`observe` otherwise (or use :meth:`try_observe`).
        """
        if self.history is None or hash(event.event_id) in self._seen:
            return False
        if self._young:
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
        if self._young:
            self._settle()
        return self._observe(event, history, self._table.find(event.task_id))

    def expire(self, now: float, current: TaskEvent | None = None) -> list[Observation]:
        """Give up tasks idle for ``ttl`` seconds before ``now``: their open attempts
        (``expired``) and queue entries end; what waited for the window is decided.

        ``current``: the event being handled, which the observations name (else a stand-in).
        """
        self._since_expiry = 0
        if self._young:
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

    # -- taking events: the fast path, inlined ----------------------------------------
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
        seen = self._seen
        task_id = event.task_id
        if key in seen or (self._logs and task_id in self._logs):
            return self._try_general(event)
        kind = event.event_type
        ts = event.timestamp.timestamp()
        young = self._young
        state = young.get(task_id)
        # slot: -1 for a young task (its fields in locals, stored back as a new tuple), -2 for
        # a task not tracked, else the task's slot in the table (fields used in place)
        if state is not None:
            added, number, enq, start, touch, attempt, worker, context = state
            slot = -1
        else:
            table = self._table
            found = None
            if table.used:  # (when every task ends young, the table stays empty)
                keys, mask = table.keys, table.mask
                position = hash(task_id) & mask
                found = keys[position]
                while found is not None and found != task_id:  # TaskTable.find, inlined
                    position = (position + 1) & mask
                    found = keys[position]
            if found is None:
                slot = -2  # not tracked
            else:
                slot = table.slots[position]
                number = table.queue[slot]
                touch = table.t_touch[slot]
                if not number:
                    return self._try_general(event)
                start = table.t_start[slot]
        if slot == -2:
            if ts < self._clock - self.reorder_window or self._clock < self._recovering_until:
                return self._try_general(event)  # late, or maybe begun before a restart
            if kind == "STARTED":  # a task whose ENQUEUED was not seen (yet)
                return self._first_start(event, ts, key)
            if kind != "ENQUEUED":
                return self._try_general(event)
            details = event.details
            queue = details.get("queue_name")
            if not isinstance(queue, str) or not queue:
                queue = queue_of(details) or "default"
            number = self._name_ids.get(queue) or self._intern(queue)
            context = (
                compact_context(event.trace_context)
                if self._keep_context and event.trace_context else None
            )
            enq = due_time(details, ts) if "eta" in details else ts
            young[task_id] = (ts, number, enq, NAN, ts, 0, 0, context)
            obs = Observation(event, queue, False, None, False, None, None, 1)
        elif ts < touch:
            return self._try_general(event)  # out of order for its task
        elif kind == "STARTED":
            if slot >= 0:
                attempt = table.attempt[slot]
                enq = table.t_enq[slot]
            given = event.details.get("attempt")
            if start == start or enq != enq or (given is not None and given != attempt + 1):
                return self._try_general(event)  # superseding, no queue entry, or a gap
            attempt = attempt + 1 if attempt < _MAX_ATTEMPT else attempt
            name = event.details.get("worker_id")
            worker = 0
            if isinstance(name, str):
                worker = self._name_ids.get(name) or self._intern(name)
            wait = ts - enq
            obs = Observation(event, self._names[number] or UNKNOWN_QUEUE, False,
                              wait if wait > 0 else 0.0, True, None, attempt, -1)
            if slot < 0:
                young[task_id] = (added, number, NAN, ts, ts, attempt, worker, context)
            else:
                table.attempt[slot] = attempt
                table.worker[slot] = worker
                table.t_start[slot] = ts
                table.t_enq[slot] = NAN
                table.t_touch[slot] = ts
        elif kind in TERMINAL_STATUS:
            if slot >= 0:
                attempt = table.attempt[slot]
            given = event.details.get("attempt")
            if start != start or (given is not None and given != attempt):
                return self._try_general(event)  # no open attempt, or not this one's end
            final = kind in FINAL_TYPES
            if slot < 0:
                if final:
                    del young[task_id]
                else:
                    young[task_id] = (added, number, NAN, NAN, ts, attempt, worker, context)
            else:
                worker = table.worker[slot]
                context = table.context(slot) if table.ctx_span is not None else None
                if final:
                    table.remove(slot, position)
                else:
                    table.t_start[slot] = NAN
                    table.t_touch[slot] = ts
            names = self._names
            queue = names[number] or UNKNOWN_QUEUE
            obs = Observation(event, queue, False, None, False, Attempt(
                task_id, queue, attempt, names[worker], start, ts, TERMINAL_STATUS[kind],
                event, context, True,
            ))
        elif kind == "RETRIED" and start != start:
            if slot >= 0:
                enq = table.t_enq[slot]
            if enq == enq:  # queued already: an attempt in between is missing
                return self._try_general(event)
            enq = due_time(event.details, ts) if "eta" in event.details else ts
            obs = Observation(event, self._names[number] or UNKNOWN_QUEUE, False, None, False,
                              None, None, 1)
            if slot < 0:
                young[task_id] = (added, number, enq, start, ts, attempt, worker, context)
            else:
                table.t_enq[slot] = enq
                table.t_touch[slot] = ts
        else:
            return self._try_general(event)
        # remember the event id (PairingState._remember, inlined)
        order = self._seen_order
        if len(order) >= self._seen_limit:
            seen.discard(order.popleft())
        order.append(key)
        seen.add(key)
        if ts > self._clock:
            self._clock = ts
            held = self._held
            if held and held[0][0] <= ts - self.reorder_window:
                obs.released.extend(self.release(ts))
        since = self._since_expiry + 1
        self._since_expiry = since
        if since >= _EXPIRY_EVERY:
            self._expire_into(obs)
        return obs

    def _first_start(self, event: TaskEvent, ts: float, key: int) -> Observation | None:
        """A STARTED of a task not tracked, naming its queue: tracked from here (an
        ENQUEUED coming later still gives the queue wait)."""
        details = event.details
        queue = queue_of(details)
        if queue is None:
            return self._try_general(event)
        given = details.get("attempt")
        attempt = given if type(given) is int and 0 < given <= _MAX_ATTEMPT else 1
        name = details.get("worker_id")
        worker = self._intern(name) if isinstance(name, str) else 0
        self._young[event.task_id] = (ts, self._intern(queue), NAN, ts, ts, attempt, worker,
                                      None)
        obs = Observation(event, queue, False, None, True, None, attempt)
        self._remember(key)
        if ts > self._clock:
            self._clock = ts
        self._after(obs)
        return obs

    def _try_general(self, event: TaskEvent) -> Observation | None:
        if self._young:
            self._settle()
        index = self._table.find(event.task_id)
        if (
            self.history is not None
            and hash(event.event_id) not in self._seen
            and self._needs_history(event, index)
        ):
            return None
        return self._observe(event, None, index)

