"""In-process storage: fast, bounded, and gone when the process exits."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from datetime import datetime

from omniq_observe._validate import optional_positive_int
from omniq_observe.backend.base import (
    BaseEventStorage,
    Health,
    Page,
    Position,
    StoredEvent,
    as_utc,
    check_prune_limit,
    query_matches,
)
from omniq_observe.models.event import TaskEvent

__all__ = ["MemoryBackend"]


class MemoryBackend(BaseEventStorage):
    """Keeps events in lists in this process.

    Thread-safe, so a sync :class:`~omniq_observe.events.EventLogger` and an async
    processor may share one instance. Positions are 1, 2, 3, ... and stay stable when
    events are pruned.

    Args:
        max_events: keep at most this many events; the oldest are dropped first
            (``None``: unbounded).
    """

    backend_name = "memory"
    poll_interval = 0.005
    read_ahead = True

    def __init__(self, max_events: int | None = None) -> None:
        self.max_events = optional_positive_int("max_events", max_events)
        self._lock = threading.Lock()
        self._keys: list[int] = []  # positions, ascending, parallel to _events
        self._events: list[TaskEvent] = []
        self._next = 1
        self._committed: dict[str, Position] = {}
        # task_id -> its stored events in log order, so task_history never scans the log.
        self._by_task: dict[str, list[TaskEvent]] = {}

    async def append(self, events: Sequence[TaskEvent]) -> None:
        with self._lock:
            start = self._next
            self._next += len(events)
            self._keys.extend(range(start, self._next))
            self._events.extend(events)
            by_task = self._by_task
            for event in events:
                history = by_task.get(event.task_id)
                if history is None:
                    by_task[event.task_id] = [event]
                else:
                    history.append(event)
            if self.max_events is not None and len(self._events) > self.max_events:
                self._drop_oldest(len(self._events) - self.max_events)

    def _drop_oldest(self, count: int) -> None:
        """Drop the ``count`` oldest events, and each from the front of its task's history."""
        by_task = self._by_task
        for event in self._events[:count]:
            history = by_task[event.task_id]
            if len(history) == 1:
                del by_task[event.task_id]
            else:
                del history[0]
        del self._keys[:count]
        del self._events[:count]

    async def read_after(self, position: Position | None, limit: int) -> list[StoredEvent]:
        with self._lock:
            start = 0 if position is None else bisect.bisect_right(self._keys, int(position))
            keys = self._keys[start : start + limit]
            events = self._events[start : start + limit]
        return [StoredEvent(k, e) for k, e in zip(keys, events, strict=True)]

    async def last_position(self) -> Position | None:
        with self._lock:
            return self._keys[-1] if self._keys else None

    async def commit_position(self, group: str, position: Position) -> None:
        with self._lock:
            self._committed[group] = int(position)

    async def get_position(self, group: str) -> Position | None:
        with self._lock:
            return self._committed.get(group)

    async def positions(self) -> dict[str, Position]:
        with self._lock:
            return dict(self._committed)

    async def task_history(self, task_id: str, limit: int = 1000) -> list[TaskEvent]:
        with self._lock:
            history = self._by_task.get(task_id)
            return [] if history is None else history[:limit]

    async def query(
        self,
        *,
        event_types: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after: Position | None = None,
    ) -> Page:
        types = {t.upper() for t in event_types} if event_types else None
        since, until = as_utc(since), as_utc(until)
        found: list[StoredEvent] = []
        with self._lock:
            start = 0 if after is None else bisect.bisect_right(self._keys, int(after))
            for index in range(start, len(self._events)):
                event = self._events[index]
                if not query_matches(event, types, since, until):
                    continue
                if len(found) == limit:
                    return Page(found, found[-1].position)
                found.append(StoredEvent(self._keys[index], event))
        return Page(found, None)

    async def count(self) -> int:
        with self._lock:
            return len(self._events)

    async def prune(
        self, *, older_than: datetime | None = None, max_events: int | None = None
    ) -> int:
        check_prune_limit(max_events)
        cutoff = as_utc(older_than)
        with self._lock:
            before = len(self._events)
            if cutoff is not None:
                pairs = zip(self._keys, self._events, strict=True)
                kept = [(k, e) for k, e in pairs if e.timestamp >= cutoff]
                self._keys = [k for k, _ in kept]
                self._events = [e for _, e in kept]
                self._by_task = {}
                for event in self._events:
                    self._by_task.setdefault(event.task_id, []).append(event)
            if max_events is not None and len(self._events) > max_events:
                self._drop_oldest(len(self._events) - max_events)
            return before - len(self._events)

    async def health(self) -> Health:
        return Health(ok=True, backend=self.backend_name, detail=f"{len(self._events)} events")

    async def close(self) -> None:
        return None
