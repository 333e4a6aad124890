"""The careful path of pairing: one task's events sorted by event time, replayed, decided.

A task whose events came out of order, or whose pairs are still ambiguous, leaves the
fast task table for a :class:`TaskLog`. The log keeps the task's events sorted by event
time (the ones delivered, and the task's stored history once read), replays them with the
lifecycle rules on every change, and emits each pair once it is *decided*:

* a pair whose every event is "done" (handled before: by the fast path, or by a run of the
  processor before a restart) was emitted then, and is not emitted again;
* a pair waits until each of its events is delivered (or done);
* a pair that a late event could still change waits until the watermark (the newest event
  time seen minus the reorder window) passes it: an attempt ended by RETRIED (its FAILED
  may still come), a STARTED after another STARTED, a cancellation of a queued task, a
  terminal with no start, a STARTED whose attempt number says an attempt is missing;
* a pair that contradicts one already emitted (its event came later than the window) is
  not emitted: the event is counted ``late`` instead.
"""

from __future__ import annotations

import bisect
import math
from datetime import datetime, timezone
from typing import Any

from omniq_observe._details import queue_of
from omniq_observe.models.event import FINAL_TYPES, QUEUEING_TYPES, TERMINAL_STATUS, TaskEvent
from omniq_observe.pairing._types import (
    UNKNOWN_QUEUE,
    Attempt,
    Observation,
    TraceContext,
    _attempt_number,
    _ts,
    compact_context,
    due_time,
)

__all__ = ["INF", "Item", "TaskLog"]

INF = math.inf
_RANK = {"ENQUEUED": 0, "STARTED": 1, "RETRIED": 3}
_CLOSERS = frozenset({*TERMINAL_STATUS, "RETRIED"})
_Effect = tuple[str, tuple["Item", ...], str, float]  # kind, events, status, decided at


class Item:
    """One event of a task's log (``event`` None: a stand-in for state the fast path had)."""

    __slots__ = ("attempt", "delivered", "done", "due", "event", "key", "kind", "mark", "order",
                 "ts", "worker")

    def __init__(self, event: TaskEvent | None, kind: str, ts: float, key: str, seq: int) -> None:
        self.event = event
        self.kind = kind
        self.ts = ts
        self.key = key
        self.order = (ts, _RANK.get(kind, 2), seq)
        self.done = False
        self.delivered = False
        self.mark = 0  # the pairing's batch mark when the event was delivered
        self.due = ts
        self.attempt: int | None = None
        self.worker: str | None = None
        if event is not None:
            details = event.details
            if kind in ("ENQUEUED", "RETRIED"):
                self.due = due_time(details, ts)
            elif kind == "STARTED":
                given = details.get("attempt")
                self.attempt = _attempt_number(given, 0) or None
                worker = details.get("worker_id")
                self.worker = worker if isinstance(worker, str) else None


def replay(items: list[Item], base_attempt: int) -> tuple[list[_Effect], Item | None, Item | None]:
    """The pairs of ``items`` (sorted by event time) by the lifecycle rules, each with the
    watermark at which it is decided (-inf: at once); then the open start and the pending
    queue entry left at the end."""
    steps = _Replay(items, base_attempt)
    steps.run()
    return steps.effects, steps.running, steps.source


class _Replay:
    """One pass of :func:`replay` over a task's items, an event kind per step."""

    __slots__ = ("count", "effects", "items", "running", "source")

    def __init__(self, items: list[Item], base_attempt: int) -> None:
        self.items = items
        self.effects: list[_Effect] = []
        self.source: Item | None = None  # what the task waits in the queue since
        self.running: Item | None = None  # the open attempt's STARTED
        self.count = base_attempt  # attempts started so far

    def run(self) -> None:
        items = self.items
        i = 0
        while i < len(items):
            item = items[i]
            kind = item.kind
            if kind == "ENQUEUED":
                if self.source is None and self.running is None:
                    self.source = item
            elif kind == "RETRIED":
                self._retried(item)
            elif kind == "STARTED":
                self._started(item)
            elif kind in TERMINAL_STATUS:
                i += self._ended(i)
            i += 1

    def _retried(self, item: Item) -> None:
        """A RETRIED ends the open attempt (numbers differ between frameworks) and
        re-enqueues the task."""
        if self.running is not None:
            self.effects.append(("attempt", (self.running, item), "retried", item.ts))
            self.running = None
        if self.source is not None:
            self.effects.append(("drop", (self.source, item), "", -INF))
        self.source = item

    def _started(self, item: Item) -> None:
        """A STARTED supersedes the open attempt and ends the queue wait."""
        self.count += 1
        count = self.count
        if item.attempt is None and item.event is not None:
            item.attempt = count
        if self.running is not None:
            self.effects.append(("superseded", (self.running, item), "", item.ts))
        source = self.source
        if source is not None:
            fits = item.event is None or item.event.details.get("attempt") in (None, count)
            first = source.kind == "ENQUEUED" and source.event is not None
            kind_of = "wait" if not first or _fits(item, 1, 0) else "mismatch"
            self.effects.append((kind_of, (source, item), "", -INF if fits else item.ts))
            self.source = None
        self.running = item

    def _ended(self, i: int) -> int:
        """A terminal event at ``items[i]``; returns 1 when it took the STARTED after it
        (a terminal stamped before its own start: clock skew), else 0."""
        item = self.items[i]
        status = TERMINAL_STATUS[item.kind]
        running = self.running
        if running is not None:
            fits = _fits(item, running.attempt, 0)
            self.effects.append(("attempt" if fits else "mismatch", (running, item), status,
                                 -INF if fits else item.ts))
            self.running = None
            return 0
        start = self._skewed_start(i)
        if start is not None:
            self._skew(start, item, status)
            return 1
        if item.kind == "CANCELLED" and self.source is not None:
            self.effects.append(("cancel", (self.source, item), "", item.ts))
            self.source = None
        else:
            self.effects.append(("no_start", (item,), "", item.ts))
        return 0

    def _skewed_start(self, i: int) -> Item | None:
        """The STARTED right after the terminal ``items[i]`` when the terminal is its end
        stamped before it (no other end follows the STARTED); else None."""
        items, n = self.items, len(self.items)
        if i + 1 >= n or items[i + 1].kind != "STARTED":
            return None
        if i + 2 < n and items[i + 2].kind in _CLOSERS:
            return None
        start = items[i + 1]
        return start if _fits(items[i], _given(start), 0) else None

    def _skew(self, start: Item, end: Item, status: str) -> None:
        self.count += 1
        if start.attempt is None:
            start.attempt = self.count
        if self.source is not None:
            self.effects.append(("wait", (self.source, start), "", start.ts))
            self.source = None
        self.effects.append(("skew", (start, end), status, start.ts))


def _given(item: Item) -> int | None:
    given = None if item.event is None else item.event.details.get("attempt")
    return given if isinstance(given, int) and not isinstance(given, bool) else None


def _fits(item: Item, number: int | None, offset: int) -> bool:
    """False when ``item`` names an attempt number other than ``number + offset``."""
    given = _given(item)
    return given is None or number is None or given == number + offset


def _roles(kind: str, ends: tuple[Item, ...]) -> tuple[tuple[str, str], ...]:
    if kind == "mismatch":
        return ((ends[0].key, "start" if ends[0].kind == "STARTED" else "from"),)
    if kind in ("attempt", "skew"):
        return (ends[0].key, "start"), (ends[1].key, "end")
    if kind == "wait":
        return (ends[0].key, "from"), (ends[1].key, "wait")
    if kind == "cancel":
        return (ends[0].key, "from"), (ends[1].key, "end")
    if kind == "superseded":
        return ((ends[0].key, "start"),)
    return ((ends[0].key, "end"),)  # no_start


class TaskLog:
    """One task's events in event-time order and what was emitted from them."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.items: list[Item] = []
        self.by_key: dict[str, Item] = {}
        self.queue: str | None = None
        self.context: TraceContext | None = None
        self.base_attempt = 0
        self.frontier = -INF  # events before this time need the stored history
        self.history_read = False
        self.touch = -INF
        self.emitted: set[tuple[str, ...]] = set()
        self.used: set[tuple[str, str]] = set()
        self.opened: set[str] = set()  # STARTEDs counted in progress
        self.waiting: set[str] = set()  # queue entries counted waiting
        self.uncounted: list[TaskEvent] = []  # delivered while the queue was unknown
        self.late: set[str] = set()
        self._seq = 0

    # -- building -------------------------------------------------------------------
    def add(self, event: TaskEvent | None, kind: str, ts: float, key: str) -> Item:
        """Insert an item in event-time order (or return the one with this key)."""
        item = self.by_key.get(key)
        if item is not None:
            return item
        self._seq += 1
        item = Item(event, kind, ts, key, self._seq)
        orders = [x.order for x in self.items]
        self.items.insert(bisect.bisect_right(orders, item.order), item)
        self.by_key[key] = item
        if ts > self.touch:
            self.touch = ts
        if event is not None:
            self._learn(event, kind)
        return item

    def load(self, history: list[TaskEvent], current: TaskEvent) -> None:
        """Merge the task's stored history (storage order); events stored before
        ``current`` were handled before (done)."""
        self.history_read = True
        ids = [e.event_id for e in history]
        cut = ids.index(current.event_id) if current.event_id in ids else len(history)
        for i, event in enumerate(history):
            known = self.by_key.get(event.event_id)
            item = known or self.add(event, event.event_type, _ts(event), event.event_id)
            if i < cut and not item.delivered:
                item.done = True
        if cut:  # the history holds the task from its start: stand-ins and the attempts
            self._drop_stand_ins()  # counted before the log was made are in it
            self.base_attempt = 0

    def _drop_stand_ins(self) -> None:
        for stand_in in [x for x in self.items if x.event is None]:
            kinds = QUEUEING_TYPES if stand_in.kind in QUEUEING_TYPES else {stand_in.kind}
            real = [x for x in self.items if x.done and x.kind in kinds
                    and x.event is not None and x.ts <= stand_in.ts]
            if real and stand_in.key in self.opened:
                self.opened.discard(stand_in.key)
                self.opened.add(real[-1].key)
            if real and stand_in.key in self.waiting:
                self.waiting.discard(stand_in.key)
                self.waiting.add(real[-1].key)
            self.items.remove(stand_in)
            del self.by_key[stand_in.key]

    def _learn(self, event: TaskEvent, kind: str) -> None:
        if kind == "ENQUEUED":
            if self.queue is None or self.queue == UNKNOWN_QUEUE:
                self.queue = queue_of(event.details) or "default"
            if self.context is None and event.trace_context:
                self.context = compact_context(event.trace_context)
        elif self.queue is None:
            self.queue = queue_of(event.details)

    # -- deciding -------------------------------------------------------------------
    def settle(self, watermark: float, current: TaskEvent | None) -> tuple[list[Observation],
                                                                          float]:
        """Emit what is decided at ``watermark``; return the observations and the watermark
        at which something more will be (INF: nothing waits)."""
        out: list[Observation] = []
        queue = self.queue
        if queue is None and self.uncounted and _ts(self.uncounted[0]) <= watermark:
            queue = self.queue = UNKNOWN_QUEUE
        if queue is not None and self.uncounted:
            out.extend(Observation(e, queue) for e in self.uncounted)
            self.uncounted.clear()
        effects, running, source = replay(self.items, self.base_attempt)
        wake = _ts(self.uncounted[0]) if queue is None and self.uncounted else INF
        for kind, ends, status, decided in effects:
            key = (kind, *(x.key for x in ends))
            if key in self.emitted:
                continue
            if kind == "drop":
                if ends[1].done or ends[1].delivered:
                    self.emitted.add(key)
                    if ends[0].key in self.waiting:
                        self.waiting.discard(ends[0].key)
                        out.append(self._obs(ends, waiting=-1))
                continue
            roles = _roles(kind, ends)
            if all(x.done for x in ends):
                self.emitted.add(key)
                self.used.update(roles)
                continue
            if not all(x.done or x.delivered for x in ends):
                continue
            if decided > watermark or (queue is None and ends[-1].ts > watermark):
                wake = min(wake, max(decided, ends[-1].ts if queue is None else decided))
                continue
            self.emitted.add(key)
            if any(role in self.used for role in roles):
                self._late(ends, current, out)
                continue
            self.used.update(roles)
            out.append(self._decided(kind, ends, status))
        self._gauges(running, source, out)
        return out, wake

    def _gauges(self, running: Item | None, source: Item | None, out: list[Observation]) -> None:
        if self.queue is None:
            return  # counted once the queue is known
        if self._fresh(running, "start", self.opened):
            assert running is not None
            self.opened.add(running.key)
            out.append(self._obs((running,), opened=True, attempt=running.attempt))
        if self._fresh(source, "from", self.waiting):
            assert source is not None
            self.waiting.add(source.key)
            out.append(self._obs((source,), waiting=1))

    def _fresh(self, item: Item | None, role: str, counted: set[str]) -> bool:
        """True when ``item`` (delivered here) is not counted in its gauge yet."""
        return (item is not None and item.delivered and not item.done
                and item.key not in counted and (item.key, role) not in self.used)

    def _late(self, ends: tuple[Item, ...], current: TaskEvent | None,
              out: list[Observation]) -> None:
        fresh = [x for x in ends if not x.done and x.event is not None]
        target = next((x for x in fresh if current is not None and x.event is current),
                      fresh[-1] if fresh else None)
        if target is not None and target.key not in self.late:
            self.late.add(target.key)
            out.append(self._obs((target,), unpaired=["late"]))

    def _decided(self, kind: str, ends: tuple[Item, ...], status: str) -> Observation:
        queue = self.queue or UNKNOWN_QUEUE
        if kind == "wait":
            source, start = ends
            waited = source.key in self.waiting
            self.waiting.discard(source.key)
            wait = start.ts - source.due
            return self._obs(ends, queue_wait=wait if wait > 0 else 0.0,
                             waiting=-1 if waited else 0)
        if kind == "mismatch":  # numbered apart: events in between came too late
            first = ends[0]
            if first.kind != "STARTED":
                waited = first.key in self.waiting
                self.waiting.discard(first.key)
                return self._obs(ends, waiting=-1 if waited else 0, unpaired=["late"])
            was_open = first.key in self.opened
            self.opened.discard(first.key)
            gone = self._attempt(first, None, "expired", was_open)
            return self._obs(ends, unpaired=["late"], expired=[gone])
        if kind == "cancel":
            waited = ends[0].key in self.waiting
            self.waiting.discard(ends[0].key)
            return self._obs(ends, waiting=-1 if waited else 0)
        if kind == "no_start":
            end = ends[0]
            gone = Attempt(self.task_id, queue, 0, None, None, end.ts, "no_start", end.event,
                           self.context)
            return self._obs(ends, expired=[gone])
        start = ends[0]
        was_open = start.key in self.opened
        self.opened.discard(start.key)
        if kind == "superseded":
            gone = self._attempt(start, None, "expired", was_open)
            return self._obs(ends, unpaired=["superseded"], expired=[gone])
        closed = self._attempt(start, ends[1], status, was_open)
        return self._obs(ends, closed=closed, unpaired=["clock_skew"] if kind == "skew" else [])

    def _attempt(self, start: Item, end: Item | None, status: str, was_open: bool) -> Attempt:
        return Attempt(
            self.task_id, self.queue or UNKNOWN_QUEUE, start.attempt or 1, start.worker,
            start.ts, None if end is None else end.ts, status,
            None if end is None else end.event, self.context, was_open,
        )

    def _obs(self, ends: tuple[Item, ...], **fields: Any) -> Observation:
        event = next(x.event for x in reversed(ends) if x.event is not None)
        return Observation(event, self.queue or UNKNOWN_QUEUE, counted=False, **fields)

    # -- ending ---------------------------------------------------------------------
    def finished(self, watermark: float) -> bool:
        """True when nothing more is expected of this log: its task ended (COMPLETED or
        CANCELLED) and every pair of it was emitted (``watermark``: kept for callers)."""
        if self.uncounted:
            return False
        if any(not (x.done or x.delivered) for x in self.items):
            return False
        effects, running, source = replay(self.items, self.base_attempt)
        if running is not None or source is not None or not self.items:
            return False
        if any((kind, *(x.key for x in ends)) not in self.emitted
               for kind, ends, _s, _d in effects):
            return False
        last = next((x for x in reversed(self.items) if x.kind in _CLOSERS), None)
        return last is not None and last.kind in FINAL_TYPES

    def expire(self, current: TaskEvent) -> list[Observation]:
        """Give the task up: emit what waits, end its open attempt and its queue entry
        (``current``: the event being handled, or a stand-in, named by the observations)."""
        out, _wake = self.settle(INF, current)
        _effects, running, source = replay(self.items, self.base_attempt)
        if running is not None and (running.key in self.opened or running.delivered):
            gone = self._attempt(running, None, "expired", running.key in self.opened)
            out.append(Observation(current, self.queue or UNKNOWN_QUEUE, counted=False,
                                   expired=[gone]))
        if source is not None and source.key in self.waiting:
            out.append(Observation(current, self.queue or UNKNOWN_QUEUE, counted=False,
                                   waiting=-1))
        return out


def stand_in(task_id: str, now: float) -> TaskEvent:
    """An event naming a task given up when no event is at hand (never counted)."""
    when = datetime.fromtimestamp(now if math.isfinite(now) else 0.0, timezone.utc)
    return TaskEvent(task_id=task_id, event_type="EXPIRED", timestamp=when)
