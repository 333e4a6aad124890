"""The pairing state and its careful path: what :class:`TaskPairing` does off the fast path.

:class:`PairingState` holds the fast task table (tasks whose events came in order and
paired unambiguously), the :class:`~omniq_observe.pairing._log.TaskLog` of every other
task, interned names, the dedupe ring, the event-time clock and the logs waiting for the
watermark. :class:`~omniq_observe.pairing.TaskPairing` adds the public API and the fast
path, which gives the same results (``tests/test_pairing.py`` compares them).
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from omniq_observe._details import queue_of
from omniq_observe._validate import non_negative_int, non_negative_seconds, positive_seconds
from omniq_observe.models.event import TERMINAL_TYPES, TaskEvent
from omniq_observe.pairing._log import INF, TaskLog, stand_in
from omniq_observe.pairing._table import Fields, TaskTable
from omniq_observe.pairing._types import (
    _EXPIRY_EVERY,
    _MAX_INTERNED,
    OVERFLOW,
    UNKNOWN_QUEUE,
    Attempt,
    History,
    Observation,
    _ts,
)

__all__ = ["PairingState"]


class PairingState:
    """Pairing state and the careful path; see :class:`~omniq_observe.pairing.TaskPairing`."""

    def __init__(
        self,
        history: History | None = None,
        *,
        ttl: float = 3600.0,
        dedupe_window: int = 100_000,
        keep_context: bool = False,
        reorder_window: float = 10.0,
    ) -> None:
        self.history = history
        self.ttl = ttl = positive_seconds("ttl", ttl, infinite=True)
        self.reorder_window = non_negative_seconds("reorder_window", reorder_window)
        self.dedupe_window = non_negative_int("dedupe_window", dedupe_window)
        self._table = TaskTable(ttl / 16 if math.isfinite(ttl) else 3600.0)
        self._keep_context = False
        self.keep_context = keep_context
        # Tasks enqueued since the last _settle, oldest first: the fast path keeps a new
        # task here (a dict entry costs a fraction of a table slot's), so that a task that
        # ends before the next settle never touches the table.
        self._unsettled: dict[str, Fields] = {}
        self._names: list[str | None] = [None]  # interned queue/worker names by id; 0: none
        self._name_ids: dict[str, int] = {}
        self._seen: set[int] = set()  # hashes of recent event ids
        self._seen_order: deque[int] = deque()  # the same, oldest first
        self._seen_limit = max(1, dedupe_window)
        self._logs: dict[str, TaskLog] = {}  # tasks on the careful path
        self._held: list[tuple[float, int, str]] = []  # (decided at, seq, task id), a heap
        self._held_seq = 0
        self._clock = -math.inf  # the newest event time seen
        # After resume(), until the clock passes this (ttl after the first event), tasks
        # may have begun before the restart: an ENQUEUED of a task not tracked reads its
        # history (the task's other events may have been handled by the previous run).
        self._recovering_until = -math.inf
        self._since_expiry = 0
        self._logs_expired_at = -math.inf
        #: The batch being paired, as numbered by the processor: an event paired on the
        #: careful path remembers it (see :meth:`oldest_undecided_mark`).
        self.batch_mark = 0
        self._released_at = -math.inf  # the newest wall-clock time release() decided at

    @property
    def keep_context(self) -> bool:
        """Keep each task's ENQUEUED trace context for its attempts (tracing)."""
        return self._keep_context

    @keep_context.setter
    def keep_context(self, value: bool) -> None:
        self._keep_context = bool(value)
        if value:
            self._table.keep_contexts()

    def resume(self) -> None:
        """Say that a previous run handled events before this pairing's first one (the
        processor resumed from a checkpoint): for ``ttl`` seconds of event time, an
        ENQUEUED of a task not tracked reads the task's history, in case its other events
        were handled before the restart."""
        if self._clock == -math.inf:
            self._recovering_until = math.inf  # set to the first event's time + ttl

    @property
    def decided_at(self) -> float:
        """The time everything is decided up to, before the reorder window: the newest
        event time seen, or the newer wall-clock time of a :meth:`release`."""
        return max(self._clock, self._released_at)

    def oldest_undecided_mark(self) -> int | None:
        """The oldest ``batch_mark`` among events whose pairs (or counts) still wait for
        the reorder window or for their queue label; None when nothing waits.

        A processor keeps the position before that batch, so that a restart after a crash
        pairs those events again (see ``omniq_observe.events.processor``)."""
        held = {task_id for _at, _seq, task_id in self._held}
        marks = [
            item.mark
            for task_id, log in self._logs.items()
            if task_id in held or log.uncounted
            for item in log.items
            if item.delivered and not item.done
        ]
        return min(marks, default=None)

    @property
    def watermark(self) -> float:
        """The newest event time seen minus the reorder window: older events are late."""
        return self._clock - self.reorder_window

    # -- which events need the stored history ----------------------------------------
    def _needs_history(self, event: TaskEvent, slot: int) -> bool:
        kind = event.event_type
        ts = _ts(event)
        log = self._logs.get(event.task_id)
        if log is not None:
            return not log.history_read
        if slot >= 0:  # leaving the fast path: out of order, or ambiguous
            table = self._table
            return not (  # a queued task cancelled, in order: ends quietly, no read
                kind == "CANCELLED" and ts >= table.t_touch[slot]
                and math.isnan(table.t_start[slot]) and not math.isnan(table.t_enq[slot])
            )
        if ts < self.watermark:
            return True
        if kind == "ENQUEUED":  # (after a restart, its other events may have been handled)
            return self._clock < self._recovering_until
        if kind == "STARTED" or (kind not in TERMINAL_TYPES and kind != "RETRIED"):
            return queue_of(event.details) is None
        return True

    # -- the careful path -------------------------------------------------------------
    def _observe(
        self, event: TaskEvent, history: list[TaskEvent] | None, slot: int
    ) -> Observation:
        key = hash(event.event_id)
        task_id = event.task_id
        if key in self._seen:
            return Observation(event, self._known_queue(event, slot), duplicate=True)
        self._remember(key)
        ts = _ts(event)
        if ts > self._clock:
            if self._recovering_until == math.inf:
                self._recovering_until = ts + self.ttl
            self._clock = ts
        log = self._logs.get(task_id)
        if log is None:
            log = self._logs[task_id] = (
                self._leave_table(task_id, slot) if slot >= 0 else TaskLog(task_id)
            )
        if history is not None and not log.history_read:
            log.load(history, event)
        item = log.add(event, event.event_type, ts, event.event_id)
        item.delivered = True
        item.done = False
        item.mark = self.batch_mark
        if log.queue is None:
            log.uncounted.append(event)
        obs, wake = self._settle_log(log, event)
        self._hold(wake, task_id)
        self._after(obs)
        return obs

    def _settle_log(self, log: TaskLog, event: TaskEvent) -> tuple[Observation, float]:
        """The observation of ``event`` (just added to ``log``) with what it decided."""
        decided, wake = log.settle(self.watermark, event)
        counted = event not in log.uncounted
        obs = Observation(event, log.queue or UNKNOWN_QUEUE, counted=counted)
        rest: list[Observation] = []
        for other in decided:
            if other.counted:
                if other.event is event:
                    obs.counted = True
                    continue
                rest.append(other)
            elif other.event is event and _merge(obs, other):
                continue
            else:
                rest.append(other)
        obs.released = rest
        if log.finished(self.watermark):
            del self._logs[log.task_id]
        return obs, wake

    def _leave_table(self, task_id: str, slot: int) -> TaskLog:
        """Move a task from the fast table to a log, its state as stand-in events."""
        table = self._table
        log = TaskLog(task_id)
        queue_id = table.queue[slot]
        log.queue = self._names[queue_id] if queue_id else None
        log.context = table.context(slot)
        log.frontier = table.t_touch[slot]
        log.touch = table.t_touch[slot]
        enq, start, attempt = table.t_enq[slot], table.t_start[slot], table.attempt[slot]
        log.base_attempt = attempt - 1 if not math.isnan(start) else attempt
        if not math.isnan(enq):  # (due at enq, an eta maybe later than its last event)
            item = log.add(None, "ENQUEUED", min(enq, log.frontier), "~queued")
            item.due = enq
            item.done = True
            log.waiting.add(item.key)
        if not math.isnan(start):
            item = log.add(None, "STARTED", start, "~started")
            item.done = True
            item.attempt = attempt
            item.worker = self._names[table.worker[slot]]
            log.opened.add(item.key)
        table.remove(slot)
        return log

    def _hold(self, wake: float, task_id: str) -> None:
        if wake < INF:
            self._held_seq += 1
            heapq.heappush(self._held, (wake, self._held_seq, task_id))

    def _after(self, obs: Observation) -> None:
        """Release what the watermark decided; expire now and then."""
        held = self._held
        if held and held[0][0] <= self._clock - self.reorder_window:
            obs.released.extend(self.release(self._clock))
        self._since_expiry += 1
        if self._since_expiry >= _EXPIRY_EVERY:
            self._expire_into(obs)

    def _expire_into(self, obs: Observation) -> None:
        obs.released.extend(self.expire(self._clock, obs.event))

    def release(self, now: float) -> list[Observation]:
        """Decide what waited for the watermark, taken as ``now`` minus the reorder window
        when ``now`` is newer than the newest event (a processor that has caught up)."""
        if self._released_at < now < math.inf:  # (inf: decides only what waits now)
            self._released_at = now
        watermark = max(self._clock, now) - self.reorder_window
        out: list[Observation] = []
        held = self._held
        while held and held[0][0] <= watermark:
            _at, _seq, task_id = heapq.heappop(held)
            log = self._logs.get(task_id)
            if log is None:
                continue
            decided, wake = log.settle(watermark, None)
            out.extend(decided)
            self._hold(wake, task_id)
            if log.finished(watermark):
                del self._logs[task_id]
        return out

    def _expire_logs(self, cutoff: float, current: TaskEvent | None) -> list[Observation]:
        out: list[Observation] = []
        if cutoff < self._logs_expired_at + self.ttl / 16:
            return out  # visited lately (there may be many logs: not at every call)
        self._logs_expired_at = cutoff
        for task_id in [t for t, log in self._logs.items() if log.touch <= cutoff]:
            log = self._logs.pop(task_id)
            out.extend(log.expire(current or stand_in(task_id, cutoff + self.ttl)))
        return out

    # -- helpers --------------------------------------------------------------------
    def _attempt_of(self, task_id: str, slot: int, status: str) -> Attempt:
        table, names = self._table, self._names
        return Attempt(
            task_id, names[table.queue[slot]] or UNKNOWN_QUEUE, table.attempt[slot],
            names[table.worker[slot]], table.t_start[slot], None, status, None,
            table.context(slot), True,
        )

    def _known_queue(self, event: TaskEvent, slot: int) -> str:
        log = self._logs.get(event.task_id)
        if log is not None and log.queue:
            return log.queue
        if slot >= 0 and self._table.queue[slot]:
            return self._names[self._table.queue[slot]] or UNKNOWN_QUEUE
        return queue_of(event.details) or UNKNOWN_QUEUE

    def _settle(self) -> None:
        """Move the unsettled tasks into the table, oldest first.

        Called before anything but the fast path reads the table, and before anything adds
        to it: the table then holds (and expiry visits) every task in the order the tasks
        came, as if each had been added to the table at its ENQUEUED.
        """
        table = self._table
        for task_id, state in self._unsettled.items():
            added, queue, enq, start, touch, attempt, worker, context = state
            slot = table.add(task_id, added)
            table.queue[slot] = queue
            table.t_enq[slot] = enq
            table.t_start[slot] = start
            table.t_touch[slot] = touch
            table.attempt[slot] = attempt
            table.worker[slot] = worker
            if context is not None:
                table.set_context(slot, context)
        self._unsettled.clear()

    def _intern(self, name: str) -> int:
        name_id = self._name_ids.get(name)
        if name_id is None:
            if len(self._names) >= _MAX_INTERNED:
                name_id = self._name_ids.get(OVERFLOW)
                if name_id is not None:
                    return name_id
                name = OVERFLOW
            name_id = len(self._names)
            self._names.append(name)
            self._name_ids[name] = name_id
        return name_id

    def _remember(self, key: int) -> None:
        order = self._seen_order
        if len(order) >= self._seen_limit:
            self._seen.discard(order.popleft())
        order.append(key)
        self._seen.add(key)

    def expire(self, now: float, current: TaskEvent | None = None) -> list[Observation]:
        """Drop idle tasks; defined by :class:`~omniq_observe.pairing.TaskPairing`."""
        raise NotImplementedError


def _merge(obs: Observation, other: Observation) -> bool:
    """Fold ``other`` (about the same event) into ``obs`` when their fields don't clash."""
    if other.queue != obs.queue or (other.queue_wait is not None and obs.queue_wait is not None):
        return False
    if (other.closed is not None and obs.closed is not None) or (other.opened and obs.opened):
        return False
    if other.queue_wait is not None:
        obs.queue_wait = other.queue_wait
    if other.closed is not None:
        obs.closed = other.closed
    if other.opened:
        obs.opened, obs.attempt = True, other.attempt
    obs.waiting += other.waiting
    obs.unpaired.extend(other.unpaired)
    obs.expired.extend(other.expired)
    return True


