"""Event loggers: store each :class:`TaskEvent` and mark it on the caller's span.

Storage-failure policy:

* ``on_storage_error="raise"`` (the default): ``log_event`` raises
  :class:`~omniq_observe.exceptions.StorageError` carrying the cause; nothing is buffered.
* ``on_storage_error="buffer"``: an event whose write failed for a transient reason
  (:class:`~omniq_observe.exceptions.BackendUnavailableError`: connection lost, timeout,
  database locked or full) goes into a bounded in-memory buffer (``buffer_size`` events)
  and ``log_event`` returns. Any other failure is not retried: an event storage refuses
  raises :class:`~omniq_observe.exceptions.InvalidEventError` at once, other errors raise
  as under ``"raise"``, so that one bad event never blocks the events after it. A
  background task retries with backoff and drains the buffer, in order, once storage is
  back; while the buffer holds events, new ones queue behind them so that order is kept
  (an event among them that storage refuses is dropped, counted in ``stats.dropped`` and
  logged). When the buffer is full the new event is dropped and counted in
  ``stats.dropped``. Buffered events are lost if the process dies. ``flush()`` waits for
  the buffer to drain; nothing ever waits unbounded.

Batching (``batch=True``): ``log_event`` checks the event, writes the span event and takes
the trace context in the caller, as always, then puts it on a bounded queue and returns
without waiting for storage. A background writer stores the queue every ``flush_interval``
seconds or ``max_batch`` events, whichever comes first; a full queue (``max_queue``) blocks
the caller (``overflow="block"``) or drops the newest event (``"drop"``, counted in
``stats.dropped``). A failed write follows ``on_storage_error``: ``"buffer"`` retries it,
``"raise"`` drops it (counted) and the next ``flush()`` raises. ``flush()`` waits for
everything logged so far; ``close()`` flushes and stops; the sync logger also flushes at
interpreter exit. Events still queued when the process is killed are lost: at most
``flush_interval`` seconds' worth. Both loggers are fork-safe: a forked child (Celery's
prefork pool, RQ's work horse) gets its own storage connection and writer on first use,
and the parent's queue is never written twice.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import weakref
from collections.abc import Sequence
from types import TracebackType

from omniq_observe.events._base_logger import BaseEventLogger, LoggerStats
from omniq_observe.events._batch import AsyncBatcher, ThreadBatcher
from omniq_observe.events._sync import LoopThread
from omniq_observe.models.event import TaskEvent

__all__ = ["AsyncEventLogger", "EventLogger", "LoggerStats"]


class AsyncEventLogger(BaseEventLogger):
    """Records task events to storage and as span events on the caller's current span.

    Args:
        event_storage: where events go.
        tracer_provider: when given, an ENQUEUED event logged outside any span gets a
            live ``send <queue>`` PRODUCER span from this provider, and the task's spans
            join its trace. ``None`` (the default): the logger starts no span. Span events
            go on the caller's current span either way.
        on_storage_error: ``"raise"`` or ``"buffer"``; see the module docstring.
        buffer_size: the most events the retry buffer holds.
        redact_keys: details keys (substrings) whose values span and log events hide.
        max_attribute_length: span- and log-event string attributes are cut to this length.
        logger_provider: where log-based events go (``otel_events`` "log" or "both");
            ``None``: the global one of ``opentelemetry._logs`` (never set here).
        otel_events: ``"span"`` (the default): a span event on the caller's span;
            ``"log"``: a LogRecord named ``omniq.task.<type>`` correlated with the caller's
            span instead; ``"both"``. Always written in the caller's thread and context.
        batch: return before storage and let a background writer store batches (see the
            module docstring); ``flush_interval``, ``max_batch``, ``max_queue`` and
            ``overflow`` (``"block"`` or ``"drop"``) tune it.
        retry_interval: seconds between the retry buffer's first retries; the wait
            doubles while single events keep failing, up to ``max_retry_interval``.
        max_retry_interval: the longest wait between two retries, in seconds.
        logger: a structlog logger for the logger's own warnings (storage failures,
            dropped events, misspelt event types); default:
            ``structlog.get_logger("omniq_observe")``.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    def _start(self) -> None:
        settings = self.batch_settings
        self._batcher: AsyncBatcher | None = None
        if settings is not None:
            self._batcher = AsyncBatcher(self._store, settings, self._count_dropped, self._log)

    async def log_event(self, event: TaskEvent) -> None:
        """Store one event; return once it is durable and visible to processors.

        With ``batch=True``, return once it is queued for the background writer.

        Raises:
            InvalidEventError: ``event`` is not a TaskEvent, or storage refuses it (it was
                changed after it was made); never buffered.
            StorageError: storage failed and the policy is ``"raise"`` (not batching), or
                it failed for a reason that is not transient.
        """
        await self._submit([self._prepare(event)])

    async def log_events(self, events: Sequence[TaskEvent]) -> None:
        """Store a batch of events in one write, in order (or queue them, batching)."""
        await self._submit([self._prepare(event) for event in events])

    async def _submit(self, events: list[TaskEvent]) -> None:
        if self._pid != os.getpid():
            self._after_fork()
        if self._batcher is None:
            await self._store(events)
        else:
            await self._batcher.put(events)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was logged is stored and the retry buffer is empty.

        Returns False if ``timeout`` ran out.

        Raises:
            StorageError: a batched write failed under the ``"raise"`` policy (once).
        """
        if self._batcher is not None:
            if self._pid != os.getpid():
                self._after_fork()
            if not await self._batcher.flush(timeout):
                return False
        return await self._drained(timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Try to drain the buffer for up to ``timeout`` seconds, then stop retrying.

        What is still buffered then is dropped and counted.
        """
        if self._batcher is not None and self._pid == os.getpid():
            await self._batcher.close(timeout)
        await self._close_buffer(timeout)

    async def __aenter__(self) -> AsyncEventLogger:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class EventLogger(BaseEventLogger):
    """The blocking :class:`AsyncEventLogger`, usable from any thread.

    Takes the same arguments. Works from plain sync code and from a thread that is already
    running an event loop: the span event and trace context are taken in the caller's
    thread (so the caller's current span is used), and the write runs in the caller's
    thread where the storage can write without a loop (``append_blocking``), else on a
    private loop thread. ``close()`` (or the context manager) stops that thread.

    Args: as for :class:`AsyncEventLogger`.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    def _start(self) -> None:
        self._loop = LoopThread("omniq-logger")
        storage = self.event_storage
        self._direct = storage.append_blocking if storage.can_append_blocking else None
        settings = self.batch_settings
        self._batcher: ThreadBatcher | None = None
        if settings is not None:
            self._batcher = ThreadBatcher(self._write, settings, self._count_dropped, self._log)
            _BATCHING.add(self)

    def log_event(self, event: TaskEvent) -> None:
        """Store one event; return once it is durable and visible to processors.

        With ``batch=True``, return once it is queued for the background writer.

        Raises:
            InvalidEventError: ``event`` is not a TaskEvent, or storage refuses it.
            StorageError: as for :meth:`AsyncEventLogger.log_event`.
        """
        self._submit([self._prepare(event)])

    def log_events(self, events: Sequence[TaskEvent]) -> None:
        """Store a batch of events in one write, in order (or queue them, batching)."""
        self._submit([self._prepare(event) for event in events])

    def _submit(self, prepared: list[TaskEvent]) -> None:
        if self._pid != os.getpid():
            self._after_fork()  # the parent's loop thread and writer thread do not exist here
        if self._batcher is not None:
            self._batcher.put(prepared)
        else:
            self._write(prepared)

    def _write(self, prepared: list[TaskEvent]) -> None:
        direct = self._direct
        if direct is not None and not self._buffer:
            try:
                direct(prepared)
            except Exception:
                pass  # fall through to the loop, which applies the policy
            else:
                self.stats.logged += len(prepared)
                return
        self._loop.run(self._store(prepared))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was logged is stored and the retry buffer is empty.

        Returns False if ``timeout`` ran out.

        Raises:
            StorageError: a batched write failed under the ``"raise"`` policy (once).
        """
        if self._pid != os.getpid():
            self._after_fork()
        if self._batcher is not None and not self._batcher.flush(timeout):
            return False
        return self._loop.run(self._drained(timeout))

    def close(self, timeout: float | None = None) -> None:
        """Store what was logged, drain what can be drained and stop. Idempotent.

        ``timeout`` bounds the wait for the batching queue (None: until it is written).
        """
        if self._pid != os.getpid():
            self._after_fork()  # nothing of the parent's to close here
        if self._batcher is not None:
            self._batcher.close(timeout)
            _BATCHING.discard(self)
        if self._loop.running:
            self._loop.run(self._close_buffer(_CLOSE_TIMEOUT))
        self._loop.stop()

    def __enter__(self) -> EventLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_BATCHING: weakref.WeakSet[EventLogger] = weakref.WeakSet()
AT_EXIT_TIMEOUT = 5.0
_CLOSE_TIMEOUT = 5.0  # the retry buffer's last chance, as AsyncEventLogger.aclose's default


def _flush_at_exit() -> None:
    """Store what batching sync loggers of this process still hold (bounded wait)."""
    pid = os.getpid()
    for logger in list(_BATCHING):
        if logger._pid == pid and logger._batcher is not None:
            with contextlib.suppress(Exception):  # never fail the exit; already logged
                logger._batcher.flush(AT_EXIT_TIMEOUT)


# threading's exit hooks run before atexit's, while storage may still start its threads
# and executors (concurrent.futures registers the same way); atexit is the fallback.
getattr(threading, "_register_atexit", atexit.register)(_flush_at_exit)
