"""What the web view knows: live figures, recent failures and task ids, fed from storage.

:class:`WebState` reads the last 24 hours of history through the public storage API, then
follows new events (``read_after``), and answers the JSON documents of the API. It lives
on the event loop of ``serve``; the HTTP threads call it through that loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import structlog

from omniq_observe._details import error_type_of, truncate
from omniq_observe._follow import StorageFollower
from omniq_observe.backend import BaseEventStorage
from omniq_observe.models.event import TaskEvent
from omniq_observe.web._live import WINDOWS, LiveFigures
from omniq_observe.web._timeline import MAX_TEXT, iso, task_timeline, traceback_head

__all__ = ["PREFIX_LENGTH", "TaskLookup", "WebState"]

#: Task ids are indexed by this many leading characters (what ``top`` shows).
PREFIX_LENGTH = 8
_FAILURES_KEPT = 1000
_TASKS_KEPT = 2_000_000
_CANDIDATES = 20


class TaskLookup:
    """Task ids seen recently, findable by a unique prefix.

    Args:
        max_tasks: how many ids are remembered (the oldest are forgotten first).
    """

    def __init__(self, max_tasks: int = _TASKS_KEPT) -> None:
        self.max_tasks = max_tasks
        self._ids: dict[str, None] = {}
        self._by_prefix: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, task_id: str) -> None:
        """Remember ``task_id``."""
        if task_id in self._ids:
            return
        self._ids[task_id] = None
        self._by_prefix.setdefault(task_id[:PREFIX_LENGTH], []).append(task_id)
        if len(self._ids) > self.max_tasks:
            oldest = next(iter(self._ids))
            del self._ids[oldest]
            same = self._by_prefix[oldest[:PREFIX_LENGTH]]
            same.remove(oldest)
            if not same:
                del self._by_prefix[oldest[:PREFIX_LENGTH]]

    def matches(self, prefix: str, limit: int = _CANDIDATES) -> list[str]:
        """Up to ``limit`` remembered ids starting with ``prefix`` (the id itself first)."""
        if prefix in self._ids:
            return [prefix]
        if len(prefix) >= PREFIX_LENGTH:
            pool: Iterable[str] = self._by_prefix.get(prefix[:PREFIX_LENGTH], ())
        else:
            pool = self._ids
        found = []
        for task_id in pool:
            if task_id.startswith(prefix):
                found.append(task_id)
                if len(found) >= limit:
                    break
        return found


class WebState:
    """Live figures, recent failures and task ids of one store.

    Args:
        storage: the store (read only).
        clock: epoch seconds now (for tests).
        poll_interval: seconds between reads of new events.
    """

    def __init__(
        self,
        storage: BaseEventStorage,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.5,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.poll_interval = poll_interval
        self.follower = StorageFollower(storage, self.add_all)
        self.loaded = False
        self._reset()

    def _reset(self) -> None:
        self.live = LiveFigures(
            self.storage.task_history, self.clock, lambda e: error_type_of(e.details)
        )
        self.failures: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=_FAILURES_KEPT
        )
        self.tasks = TaskLookup()
        self.events = 0

    async def add_all(self, events: Iterable[TaskEvent]) -> None:
        """Take events in log order."""
        live, tasks = self.live, self.tasks
        for event in events:
            obs = await live.add(event)
            if obs.duplicate:
                continue
            self.events += 1
            tasks.add(event.task_id)
            if event.event_type in ("FAILED", "TIMEOUT"):
                self.failures.append(_failure(event, obs.queue))

    async def run(self, stop: asyncio.Event) -> None:
        """Load the last 24 hours, then follow new events until ``stop`` is set.

        A failed read is logged and tried again after ``poll_interval``; it never ends
        the loop (nor ``serve``).
        """
        log = structlog.get_logger("omniq_observe.web")
        while not stop.is_set():
            try:
                if self.loaded:
                    await self.follower.poll()
                else:
                    await self._load()
                    log.debug("omniq.web_loaded", events=self.events, tasks=len(self.tasks))
            except Exception as exc:  # a storage hiccup must not end the view
                log.warning("omniq.web_read_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval)

    async def _load(self) -> None:
        self._reset()  # a load that failed half-way starts again from nothing
        since = datetime.fromtimestamp(self.clock() - max(WINDOWS.values()), timezone.utc)
        await self.follower.load(since)
        self.live.prepare()
        self.loaded = True

    # -- the JSON documents ----------------------------------------------------------------
    def queues_document(self, window: str) -> dict[str, Any]:
        """``/api/queues``: the overview rows and plot series of ``window``."""
        newest = self.live.newest
        return {
            "window": window,
            "window_seconds": WINDOWS[window],
            "loaded": self.loaded,
            "now": iso(self.clock()),
            "newest_event": None if newest is None else iso(newest),
            "queues": self.live.queues(window),
            "series": self.live.series(window),
        }

    def failures_document(
        self, window: str, queue: str | None, error_type: str | None, limit: int
    ) -> dict[str, Any]:
        """``/api/failures``: counts in ``window`` and the latest failures, newest first."""
        cutoff = self.clock() - WINDOWS[window]
        latest = [
            f for f in reversed(self.failures)
            if f["ts"] >= cutoff
            and (queue is None or f["queue"] == queue)
            and (error_type is None or f["error_type"] == error_type)
        ]
        latest.sort(key=lambda f: f["ts"], reverse=True)
        return {
            "window": window,
            "loaded": self.loaded,
            "counts": self.live.failure_counts(window),
            "queue": queue,
            "error_type": error_type,
            "failures": [{k: v for k, v in f.items() if k != "ts"} for f in latest[:limit]],
        }

    async def task_document(self, key: str) -> tuple[int, dict[str, Any]]:
        """``/api/tasks/<key>``: (200, timeline), (300, candidates) or (404, reason)."""
        matches = self.tasks.matches(key)
        if len(matches) > 1:
            return 300, {"error": f"{key!r} is the prefix of several tasks",
                         "candidates": matches}
        task_id = matches[0] if matches else key
        events = await self.storage.task_history(task_id)
        if not events:
            return 404, {"error": f"no task {key!r} (an id or a unique prefix of one)"}
        self.tasks.add(task_id)
        return 200, task_timeline(task_id, events, self.clock())


def _failure(event: TaskEvent, queue: str) -> dict[str, Any]:
    details = event.details
    error = details.get("error")
    ts = event.timestamp.timestamp()
    return {
        "ts": ts,
        "timestamp": iso(ts),
        "task_id": event.task_id,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "queue": queue,
        "error_type": error_type_of(details),
        "error": truncate(error, MAX_TEXT) if isinstance(error, str) else None,
        "traceback": traceback_head(details),
    }
