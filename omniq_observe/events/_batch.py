"""The background writers behind ``batch=True`` loggers.

A caller's ``log_event`` puts its prepared event on a bounded queue and returns; a writer
stores what is queued every ``flush_interval`` seconds, or as soon as ``max_batch`` events
wait, whichever comes first (OpenTelemetry's BatchSpanProcessor works the same way).

* :class:`ThreadBatcher` serves the sync ``EventLogger``: the writer is a daemon thread.
* :class:`AsyncBatcher` serves ``AsyncEventLogger``: the writer is a task on the caller's
  event loop, so the storage is only ever used from that loop.

Both count ``accepted`` and ``done`` events; ``flush()`` waits until ``done`` reaches what
was accepted when it was called. A write that raises is logged, its events are counted as
dropped, and the error is raised again by the next ``flush()`` (which is how the ``"raise"``
storage policy reaches a caller that did not wait for storage).

Fork safety is the loggers' business (see :func:`reopen_storage`): a forked child makes a
new batcher, so the parent's queue, copied into the child, is never written twice.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures.thread  # noqa: F401  (see below)
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from omniq_observe._validate import positive_int, positive_seconds
from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import TaskEvent

__all__ = ["OVERFLOW_POLICIES", "AsyncBatcher", "BatchSettings", "ThreadBatcher", "reopen_storage"]

# concurrent.futures imports its thread pool lazily, and that import registers an exit hook,
# which fails once the interpreter shuts down: imported here, a storage that starts its
# executor during the exit-time flush still works.
OVERFLOW_POLICIES = ("block", "drop")


class BatchSettings:
    """The checked ``flush_interval``, ``max_batch``, ``max_queue`` and ``overflow``."""

    __slots__ = ("flush_interval", "max_batch", "max_queue", "overflow")

    def __init__(
        self, flush_interval: float, max_batch: int, max_queue: int, overflow: str
    ) -> None:
        self.flush_interval = positive_seconds("flush_interval", flush_interval)
        self.max_batch = positive_int("max_batch", max_batch)
        self.max_queue = positive_int("max_queue", max_queue)
        if overflow not in OVERFLOW_POLICIES:
            msg = f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}"
            raise ConfigurationError(msg, setting="overflow", value=overflow)
        self.overflow = overflow


class _Counts:
    """What a batcher shares with its logger: a callback for dropped events, the logger's
    structlog logger."""

    def __init__(self, on_drop: Callable[[int], None], log: Any) -> None:
        self.on_drop = on_drop
        self.log = log
        self.accepted = 0
        self.done = 0
        self.error: BaseException | None = None
        self.warned = False

    def drop(self, count: int, why: str) -> None:
        self.on_drop(count)
        if not self.warned:  # once per batcher: a full queue would flood the log
            self.warned = True
            self.log.warning("omniq.batch_events_dropped", dropped=count, reason=why)

    def write_failed(self, batch: list[TaskEvent], exc: BaseException) -> None:
        self.error = exc
        self.on_drop(len(batch))
        self.log.warning("omniq.batch_write_failed", events=len(batch),
                         error=f"{type(exc).__name__}: {exc}")

    def raise_error(self) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise error


def _take(queue: collections.deque[TaskEvent], limit: int) -> list[TaskEvent]:
    if len(queue) <= limit:
        batch = list(queue)
        queue.clear()
        return batch
    return [queue.popleft() for _ in range(limit)]


class _Batcher:
    """The queue, settings and counts both writers share.

    Args:
        settings: the checked batching settings.
        on_drop: called with the number of events given up.
        log: the logger's structlog logger, for dropped events and failed writes.
    """

    def __init__(
        self, settings: BatchSettings, on_drop: Callable[[int], None], log: Any
    ) -> None:
        self._settings = settings
        self._counts = _Counts(on_drop, log)
        self._queue: collections.deque[TaskEvent] = collections.deque()
        self._urgent = False

    @property
    def pending(self) -> int:
        """Events accepted and not yet written."""
        return self._counts.accepted - self._counts.done


class ThreadBatcher(_Batcher):
    """A bounded queue written by a daemon thread with ``write(batch)`` (blocking)."""

    def __init__(
        self,
        write: Callable[[list[TaskEvent]], None],
        settings: BatchSettings,
        on_drop: Callable[[int], None],
        log: Any,
    ) -> None:
        super().__init__(settings, on_drop, log)
        self._write = write
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._thread: threading.Thread | None = None

    def put(self, events: list[TaskEvent]) -> None:
        """Queue ``events``; apply the overflow policy when the queue is full."""
        settings, queue, cond = self._settings, self._queue, self._cond
        with cond:
            if self._thread is None:
                self._start()
            room = settings.max_queue - len(queue)
            if len(events) > room:
                events = self._overflow(events, room)
            was_empty = not queue
            queue.extend(events)
            self._counts.accepted += len(events)
            if was_empty or len(queue) >= settings.max_batch:
                cond.notify_all()

    def _overflow(self, events: list[TaskEvent], room: int) -> list[TaskEvent]:
        """Called with the lock held: drop the newest, or wait for room chunk by chunk."""
        if self._settings.overflow == "drop" or self._closing:
            self._counts.drop(len(events) - room, "the queue is full (overflow='drop')")
            return events[:room]
        for event in events:
            while len(self._queue) >= self._settings.max_queue:
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait()
            self._queue.append(event)
            self._counts.accepted += 1
        return []

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="omniq-batch-writer", daemon=True)
        self._thread.start()

    def _next_batch(self) -> list[TaskEvent] | None:
        """Wait for a batch to be due; None when closing with nothing left."""
        settings, queue, cond = self._settings, self._queue, self._cond
        with cond:
            while not queue and not self._closing:
                cond.wait()
            deadline = time.monotonic() + settings.flush_interval
            while len(queue) < settings.max_batch and not (self._urgent or self._closing):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                cond.wait(remaining)
            if not queue:
                return None
            batch = _take(queue, settings.max_batch)
            cond.notify_all()  # room for blocked callers
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._write(batch)
            except Exception as exc:  # never let the writer thread die
                self._counts.write_failed(batch, exc)
            with self._cond:
                self._counts.done += len(batch)
                if not self._queue:
                    self._urgent = False
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything accepted so far is written; False if ``timeout`` ran out.

        Raises:
            Exception: what the last failed write raised (once).
        """
        counts = self._counts
        with self._cond:
            target = counts.accepted
            if counts.done < target:
                self._urgent = True
                self._cond.notify_all()
            ok = self._cond.wait_for(lambda: counts.done >= target, timeout)
        counts.raise_error()
        return ok

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the writer thread. Idempotent; never raises."""
        try:
            ok = self.flush(timeout)
        except Exception:
            ok = False  # already logged and counted by the writer
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return ok


class AsyncBatcher(_Batcher):
    """A bounded queue written by a task on the caller's loop with ``await write(batch)``."""

    def __init__(
        self,
        write: Callable[[list[TaskEvent]], Awaitable[None]],
        settings: BatchSettings,
        on_drop: Callable[[int], None],
        log: Any,
    ) -> None:
        super().__init__(settings, on_drop, log)
        self._write = write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()

    def _ensure_writer(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or the logger moved to a new loop
            self._loop = loop
            self._wake, self._progress = asyncio.Event(), asyncio.Event()
            self._task = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())

    async def put(self, events: list[TaskEvent]) -> None:
        """Queue ``events``; apply the overflow policy when the queue is full."""
        self._ensure_writer()
        settings, queue = self._settings, self._queue
        room = settings.max_queue - len(queue)
        if len(events) > room:
            if settings.overflow == "drop":
                self._counts.drop(len(events) - room, "the queue is full (overflow='drop')")
                events = events[:room]
            else:
                for event in events:
                    await self._wait_for_room()
                    queue.append(event)
                    self._counts.accepted += 1
                    self._wake.set()
                return
        was_empty = not queue
        queue.extend(events)
        self._counts.accepted += len(events)
        if was_empty or len(queue) >= settings.max_batch:
            self._wake.set()

    async def _wait_for_room(self) -> None:
        while len(self._queue) >= self._settings.max_queue:
            self._urgent = True
            self._wake.set()
            self._progress.clear()
            await self._progress.wait()

    async def _run(self) -> None:
        settings, queue = self._settings, self._queue
        while True:
            while not queue:
                self._wake.clear()
                await self._wake.wait()
            if len(queue) < settings.max_batch and not self._urgent:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), settings.flush_interval)
            while queue:
                await self._write_one(_take(queue, settings.max_batch))
                if len(queue) < settings.max_batch and not self._urgent:
                    break
            self._urgent = False

    async def _write_one(self, batch: list[TaskEvent]) -> None:
        try:
            await self._write(batch)
        except Exception as exc:  # never let the writer task die
            self._counts.write_failed(batch, exc)
        self._counts.done += len(batch)
        self._progress.set()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything accepted so far is written; False if ``timeout`` ran out.

        Raises:
            Exception: what the last failed write raised (once).
        """
        counts = self._counts
        target = counts.accepted
        if counts.done < target:
            self._ensure_writer()
            deadline = None if timeout is None else time.monotonic() + timeout
            while counts.done < target:
                self._urgent = True
                self._wake.set()
                self._progress.clear()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), remaining)
        counts.raise_error()
        return counts.done >= target

    async def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the writer task. Idempotent; never raises."""
        try:
            ok = await self.flush(timeout)
        except Exception:
            ok = False
        task, self._task = self._task, None
        if task is not None and not task.done() and self._loop is asyncio.get_running_loop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return ok


def reopen_storage(storage: BaseEventStorage) -> BaseEventStorage:
    """A fresh instance of ``storage`` for a forked child, with the same settings.

    The parent's threads, loops and sockets are not the child's to use. Backends this
    package ships are rebuilt from their constructor's arguments, read back from the
    attributes of the same name; any other storage is returned as is (it must then be
    fork-safe itself).
    """
    if getattr(storage, "backend_name", "") not in _REOPENED:
        return storage
    cls: Any = type(storage)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    first, rest = params[0].name, params[1:]  # path / url / dsn, then the settings
    options = {
        p.name: getattr(storage, p.name) for p in rest
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and hasattr(storage, p.name)
    }
    return cls(getattr(storage, first), **options)  # type: ignore[no-any-return]


# the shipped backends keep each constructor argument as an attribute of the same name
_REOPENED = frozenset({"sqlite", "redis", "postgres"})
