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
  new task, STARTED, terminal, RETRIED) inline with one lookup; everything else takes
  the general path, which gives the same results. A task enqueued there is first kept
  "young": its fields in a tuple in a plain dict, cheaper to make, update and drop than a
  table slot. The young tasks settle into the table, oldest first, before anything else
  reads or adds to it and whenever expiry runs (at least once every 1024 events): the table
  then holds them as if each had been added at its ENQUEUED, and a task that ends before
  that never costs a slot.
"""

from __future__ import annotations

import math

from omniq_observe._pairing_rules import PairingRules
from omniq_observe._pairing_types import (
    _EXPIRY_EVERY,
    _FINAL,
    _MAX_ATTEMPT,
    _TERMINAL_STATUS,
    OVERFLOW,
    UNKNOWN_QUEUE,
    Attempt,
    History,
    Observation,
    _attempt_number,
    _ts,
)
from omniq_observe._semantics import queue_of
from omniq_observe._task_table import NAN
from omniq_observe.models.event import TaskEvent

__all__ = ["OVERFLOW", "UNKNOWN_QUEUE", "Attempt", "History", "Observation", "TaskPairing"]


class TaskPairing(PairingRules):
    """Pairs task events; see the module docstring for the rules.

    Args:
        history: an async function returning a task's stored events (usually
            ``storage.task_history``); ``None`` disables recovery from storage.
        ttl: seconds (event time) after a task's last event that its open attempt expires.
        dedupe_window: how many recent event ids are remembered to spot duplicates.
        keep_context: keep each ENQUEUED's trace context for the attempts (tracing).
    """

    # -- public ---------------------------------------------------------------------
    @property
    def open_attempts(self) -> int:
        """How many attempts are started and not yet ended."""
        if self._young:
            self._settle()
        start = self._table.t_start
        return sum(1 for slot in self._table.live_slots() if not math.isnan(start[slot]))

    @property
    def tracked_tasks(self) -> int:
        """How many tasks the pairing holds state for."""
        return len(self._table) + len(self._young)

    def needs_history(self, event: TaskEvent) -> bool:
        """True when ``event`` can only be paired with the task's stored history.

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

    def expire(self, now: float) -> list[Attempt]:
        """Drop tasks idle for ``ttl`` seconds before ``now``; return open attempts dropped.

        Held terminal events dropped here come back as attempts with status "no_start".
        """
        self._since_expiry = 0
        if self._young:
            self._settle()
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

        The common in-order cases are paired right here with one lookup (an ENQUEUED of a
        new task, a STARTED or RETRIED of a task with a known queue and no open attempt, a
        terminal event closing the open attempt); anything else (a duplicate, out of order,
        recovery, a second start...) goes to the general path, with the same results.
        """
        event_id = event.event_id
        key = hash(event_id)
        seen = self._seen
        if key in seen or (self._consumed and event_id in self._consumed):
            return self._try_general(event)
        task_id = event.task_id
        kind = event.event_type
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
                if not number:
                    return self._try_general(event)
                start = table.t_start[slot]
        if slot == -2:
            if kind != "ENQUEUED":
                return self._try_general(event)
            ts = event.timestamp.timestamp()
            details = event.details
            queue = details.get("queue_name")
            if not isinstance(queue, str) or not queue:
                queue = queue_of(details) or "default"
            number = self._name_ids.get(queue) or self._intern(queue)
            context = event.trace_context if self.keep_context and event.trace_context else None
            young[task_id] = (ts, number, ts, NAN, ts, 0, 0, context)
            obs = Observation(event, queue)
        elif kind == "STARTED":
            if start == start or (self._pending and task_id in self._pending):
                return self._try_general(event)  # superseded, or its end came first
            ts = event.timestamp.timestamp()
            details = event.details
            if slot >= 0:
                attempt = table.attempt[slot]
                enq = table.t_enq[slot]
            given = details.get("attempt")
            if type(given) is int and 0 < given <= _MAX_ATTEMPT:
                attempt = given
            else:
                attempt = _attempt_number(given, min(attempt + 1, _MAX_ATTEMPT))
            name = details.get("worker_id")
            worker = 0
            if isinstance(name, str):
                worker = self._name_ids.get(name) or self._intern(name)
            queue = self._names[number] or UNKNOWN_QUEUE
            if enq != enq:  # NaN: no queue wait to close
                obs = Observation(event, queue, False, None, True, None, attempt)
            else:
                wait = ts - enq
                obs = Observation(event, queue, False, wait if wait >= 0 else 0.0, True, None,
                                  attempt)
                if wait < 0:
                    obs.unpaired.append("clock_skew")
            if slot < 0:
                young[task_id] = (added, number, NAN, ts, ts if ts > touch else touch, attempt,
                                  worker, context)
            else:
                table.attempt[slot] = attempt
                table.worker[slot] = worker
                table.t_start[slot] = ts
                if enq == enq:
                    table.t_enq[slot] = NAN
                if ts > table.t_touch[slot]:
                    table.t_touch[slot] = ts
        elif kind in _TERMINAL_STATUS:
            if start != start:
                return self._try_general(event)  # no open attempt: held or recovered
            ts = event.timestamp.timestamp()
            final = kind in _FINAL
            if slot < 0:
                if final:
                    del young[task_id]
                else:
                    young[task_id] = (added, number, enq, NAN, ts if ts > touch else touch,
                                      attempt, worker, context)
            else:
                attempt = table.attempt[slot]
                worker = table.worker[slot]
                contexts = self._contexts
                context = (
                    (contexts.pop(task_id, None) if final else contexts.get(task_id))
                    if contexts else None
                )
                if final:
                    table.remove(slot, position)
                else:
                    table.t_start[slot] = NAN
                    if ts > table.t_touch[slot]:
                        table.t_touch[slot] = ts
            names = self._names
            queue = names[number] or UNKNOWN_QUEUE
            obs = Observation(event, queue, False, None, False, Attempt(
                task_id, queue, attempt, names[worker], start, ts, _TERMINAL_STATUS[kind],
                event, context, True,
            ))
            if ts < start:
                obs.unpaired.append("clock_skew")
        elif kind == "RETRIED" and start != start:
            ts = event.timestamp.timestamp()
            obs = Observation(event, self._names[number] or UNKNOWN_QUEUE)
            if slot < 0:
                young[task_id] = (added, number, ts, start, ts if ts > touch else touch, attempt,
                                  worker, context)
            else:
                table.t_enq[slot] = ts
                if ts > table.t_touch[slot]:
                    table.t_touch[slot] = ts
        else:
            return self._try_general(event)
        # remember the event id (PairingRules._remember, inlined)
        order = self._seen_order
        if len(order) >= self._seen_limit:
            seen.discard(order.popleft())
        order.append(key)
        seen.add(key)
        if ts > self._clock:
            self._clock = ts
        since = self._since_expiry + 1
        self._since_expiry = since
        if since >= _EXPIRY_EVERY:
            obs.expired.extend(self.expire(self._clock))
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

