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

import asyncio
import atexit
import collections
import contextlib
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import context, trace
from opentelemetry._logs import LoggerProvider
from opentelemetry.context import Context
from opentelemetry.trace import TracerProvider

from omniq_observe._details import DEFAULT_REDACT_KEYS, Redactor, queue_of
from omniq_observe._otel import get_tracer, start_producer_span
from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.events._batch import AsyncBatcher, BatchSettings, ThreadBatcher, reopen_storage
from omniq_observe.events._log_events import OTelEventWriter
from omniq_observe.events._spans import current_trace_context
from omniq_observe.events._sync import LoopThread
from omniq_observe.exceptions import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidEventError,
    StorageError,
)
from omniq_observe.models.event import EventType, TaskEvent, encode_event

__all__ = ["AsyncEventLogger", "EventLogger", "LoggerStats"]

_log = logging.getLogger("omniq_observe.logger")
_KNOWN_TYPES = frozenset(t.value for t in EventType)


def _one_edit_apart(a: str, b: str) -> bool:
    """True when ``a`` becomes ``b`` by one inserted, deleted or replaced character, or
    two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        swapped = a[i + 1 : i + 2] + a[i : i + 1] + a[i + 2 :] == b[i:]
        return a[i + 1 :] == b[i + 1 :] or swapped
    return a[i + 1 :] == b[i:] if len(a) > len(b) else a[i:] == b[i + 1 :]
_POLICIES = ("raise", "buffer")
# The retry buffer drains in batches of up to this many events (halved after a failure).
_DRAIN_BATCH = 1000


@dataclass
class LoggerStats:
    """What a logger did: events stored, buffered after a failure, dropped, failures."""

    logged: int = 0
    buffered: int = 0
    dropped: int = 0
    storage_errors: int = 0


class AsyncEventLogger:
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

    Raises:
        ConfigurationError: a setting is invalid.
    """

    def __init__(
        self,
        event_storage: BaseEventStorage,
        tracer_provider: TracerProvider | None = None,
        *,
        on_storage_error: str = "raise",
        buffer_size: int = 10_000,
        redact_keys: Iterable[str] = DEFAULT_REDACT_KEYS,
        max_attribute_length: int = 1024,
        logger_provider: LoggerProvider | None = None,
        otel_events: str = "span",
        batch: bool = False,
        flush_interval: float = 0.1,
        max_batch: int = 1000,
        max_queue: int = 100_000,
        overflow: str = "block",
    ) -> None:
        if not isinstance(event_storage, BaseEventStorage):
            msg = f"event_storage must be a BaseEventStorage, got {type(event_storage).__name__}"
            raise ConfigurationError(msg, setting="event_storage", value=event_storage)
        if on_storage_error not in _POLICIES:
            msg = f"on_storage_error must be one of {_POLICIES}, got {on_storage_error!r}"
            raise ConfigurationError(msg, setting="on_storage_error", value=on_storage_error)
        if not isinstance(buffer_size, int) or buffer_size < 1:
            msg = f"buffer_size must be a positive integer, got {buffer_size!r}"
            raise ConfigurationError(msg, setting="buffer_size", value=buffer_size)
        self.event_storage = event_storage
        self.tracer_provider = tracer_provider
        self._producer_tracer = None if tracer_provider is None else get_tracer(tracer_provider)
        self.on_storage_error = on_storage_error
        self.buffer_size = buffer_size
        self.stats = LoggerStats()
        self._spans = OTelEventWriter(
            Redactor(redact_keys), max_attribute_length, otel_events, logger_provider
        )
        self._buffer: collections.deque[TaskEvent] = collections.deque()
        self._drain_task: asyncio.Task[None] | None = None
        self.retry_interval = 0.05
        self.max_retry_interval = 2.0
        self._warned_types: set[str] = set()  # unknown event types warned about
        self.batch_settings = (
            BatchSettings(flush_interval, max_batch, max_queue, overflow) if batch else None
        )
        self._batcher = self._new_batcher()
        self._pid = os.getpid()

    def _new_batcher(self) -> AsyncBatcher | None:
        settings = self.batch_settings
        return None if settings is None else AsyncBatcher(self.store, settings, self.count_dropped)

    def count_dropped(self, count: int) -> None:
        """Count events that were given up (a full queue, a failed batched write)."""
        self.stats.dropped += count

    def after_fork(self) -> None:
        """Start afresh in a forked child: own storage, own queue, empty retry buffer.

        Called on first use in the child; what the parent had queued is never written twice.
        """
        self._pid = os.getpid()
        self.event_storage = reopen_storage(self.event_storage)
        self.stats = LoggerStats()
        self._buffer = collections.deque()
        self._drain_task = None
        self._batcher = self._new_batcher()

    def prepare(self, event: TaskEvent) -> TaskEvent:
        """Check ``event``, add it to the caller's span and attach the caller's trace context.

        Runs in the caller's context; ``log_event`` calls it, and the sync logger calls it
        in the caller's thread.

        Raises:
            InvalidEventError: ``event`` is not a TaskEvent.
        """
        if not isinstance(event, TaskEvent):
            msg = f"event must be a TaskEvent, got {type(event).__name__}"
            raise InvalidEventError(msg, field="event", value=event)
        if event.event_type not in _KNOWN_TYPES and event.event_type not in self._warned_types:
            self._warn_unknown(event.event_type)
        ctx = context.get_current()
        if self._producer_tracer is not None and event.event_type == "ENQUEUED":
            ctx = self._producer_context(event, ctx)
        self._spans.write(event, ctx)  # span and/or log event, as otel_events says
        if ctx and not event.trace_context:  # an empty context has no trace context
            carrier = current_trace_context(ctx)
            if carrier:
                event.trace_context = carrier
        return event

    def _warn_unknown(self, kind: str) -> None:
        """Warn once per type about a custom event type one edit away from a known one
        (it is stored and counted as it is)."""
        if len(self._warned_types) < 1000:
            self._warned_types.add(kind)
        known = next((k for k in sorted(_KNOWN_TYPES) if _one_edit_apart(kind, k)), None)
        if known is not None:
            _log.warning("unknown event type %r; did you mean %s?", kind, known)

    def _producer_context(self, event: TaskEvent, ctx: Context) -> Context:
        """Start and end a ``send <queue>`` PRODUCER span for an ENQUEUED logged outside
        any span; return the context with that span current."""
        if event.trace_context or trace.get_current_span(ctx).get_span_context().is_valid:
            return ctx
        assert self._producer_tracer is not None
        queue = queue_of(event.details) or "default"
        span = start_producer_span(
            self._producer_tracer, event, queue, ctx, self._spans.spans.max_attribute_length
        )
        ctx = trace.set_span_in_context(span, ctx)
        self._spans.write_span_event(event, ctx)  # the span event goes on the producer span
        span.end(end_time=event.timestamp_ns)
        return ctx

    async def log_event(self, event: TaskEvent) -> None:
        """Store one event; return once it is durable and visible to processors.

        With ``batch=True``, return once it is queued for the background writer.

        Raises:
            InvalidEventError: ``event`` is not a TaskEvent, or storage refuses it (it was
                changed after it was made); never buffered.
            StorageError: storage failed and the policy is ``"raise"`` (not batching), or
                it failed for a reason that is not transient.
        """
        await self._submit([self.prepare(event)])

    async def log_events(self, events: Sequence[TaskEvent]) -> None:
        """Store a batch of events in one write, in order (or queue them, batching)."""
        await self._submit([self.prepare(event) for event in events])

    async def _submit(self, events: list[TaskEvent]) -> None:
        if self._pid != os.getpid():
            self.after_fork()
        if self._batcher is None:
            await self.store(events)
        else:
            await self._batcher.put(events)

    async def store(self, events: list[TaskEvent]) -> None:
        """Write already prepared events, applying the storage-failure policy."""
        if self._buffer:
            self._buffer_events(events)
            return
        try:
            await self.event_storage.append(events)
        except Exception as exc:
            await self._store_failed(events, exc)
            return
        self.stats.logged += len(events)

    async def _store_failed(self, events: list[TaskEvent], exc: Exception) -> None:
        """Apply the storage-failure policy to ``events`` that ``append`` failed to store:
        only a transient failure is buffered (under ``"buffer"``). Events storage refuses
        are left out, the others of the batch stored, then the refusal raised."""
        self.stats.storage_errors += 1
        if self.on_storage_error == "raise" or not isinstance(exc, BackendUnavailableError):
            invalid = _find_invalid(events)
            if invalid is not None:
                rest = [e for e in events if _find_invalid([e]) is None]
                if rest:
                    await self.store(rest)
                raise invalid from exc
            if isinstance(exc, StorageError):
                raise exc
            msg = f"storing {len(events)} event(s) failed: {type(exc).__name__}: {exc}"
            raise StorageError(msg) from exc
        _log.warning("omniq-observe storage failed, buffering events: %s", exc)
        self._buffer_events(events)

    def _buffer_events(self, events: list[TaskEvent]) -> None:
        room = self.buffer_size - len(self._buffer)
        kept = events[: max(0, room)]
        self._buffer.extend(kept)
        self.stats.buffered += len(kept)
        dropped = len(events) - len(kept)
        if dropped:
            self.stats.dropped += dropped
            _log.warning("omniq-observe retry buffer full: dropped %d event(s)", dropped)
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        delay, size = self.retry_interval, _DRAIN_BATCH
        while self._buffer:
            batch = list(itertools.islice(self._buffer, size))
            try:
                await self.event_storage.append(batch)
            except Exception as exc:
                self.stats.storage_errors += 1
                if not isinstance(exc, BackendUnavailableError) and self._drop_invalid(batch):
                    continue  # the rest of the batch goes again at once
                _log.debug("omniq-observe retry failed: %s", exc)
                await asyncio.sleep(delay)
                # A smaller batch may fit where a large one does not (a nearly full disk):
                # halve it first, and back off only once single events fail.
                if size > 1:
                    size //= 2
                else:
                    delay = min(delay * 2, self.max_retry_interval)
                continue
            for _ in batch:
                self._buffer.popleft()
            self.stats.logged += len(batch)
            delay, size = self.retry_interval, min(size * 2, _DRAIN_BATCH)

    def _drop_invalid(self, batch: list[TaskEvent]) -> bool:
        """Drop the events of ``batch`` that can never be stored (changed after they were
        made, say); return whether there were any."""
        bad = {id(event) for event in batch if _find_invalid([event]) is not None}
        if not bad:
            return False
        kept = [event for event in self._buffer if id(event) not in bad]
        dropped = len(self._buffer) - len(kept)
        self._buffer = collections.deque(kept)
        self.stats.dropped += dropped
        _log.error("omniq-observe dropped %d buffered event(s) storage refuses", dropped)
        return True

    @property
    def buffered(self) -> int:
        """How many events wait in the retry buffer."""
        return len(self._buffer)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was logged is stored and the retry buffer is empty.

        Returns False if ``timeout`` ran out.

        Raises:
            StorageError: a batched write failed under the ``"raise"`` policy (once).
        """
        if self._batcher is not None:
            if self._pid != os.getpid():
                self.after_fork()
            if not await self._batcher.flush(timeout):
                return False
        task = self._drain_task
        if task is None or task.done():
            return not self._buffer
        await asyncio.wait({task}, timeout=timeout)  # never raises, never cancels the task
        return not self._buffer

    async def aclose(self, timeout: float = 5.0) -> None:
        """Try to drain the buffer for up to ``timeout`` seconds, then stop retrying.

        What is still buffered then is dropped and counted.
        """
        if self._batcher is not None and self._pid == os.getpid():
            await self._batcher.close(timeout)
        with contextlib.suppress(StorageError):  # already logged and counted
            await self.flush(timeout)
        task = self._drain_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._buffer:
            self.stats.dropped += len(self._buffer)
            self._buffer.clear()

    async def __aenter__(self) -> AsyncEventLogger:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _find_invalid(events: Sequence[TaskEvent]) -> InvalidEventError | None:
    """The error of the first of ``events`` that construction or the wire form now refuses
    (an event whose fields were changed after it was made), or ``None``."""
    for event in events:
        try:
            TaskEvent(**{name: getattr(event, name) for name in event.__struct_fields__})
            encode_event(event)
        except InvalidEventError as exc:
            return exc
        except (TypeError, ValueError, OverflowError) as exc:
            msg = f"event {event.event_id!r:.100} cannot be encoded: {type(exc).__name__}: {exc}"
            return InvalidEventError(msg, field="event", value=event)
    return None


class EventLogger:
    """A blocking wrapper around :class:`AsyncEventLogger`, usable from any thread.

    Works from plain sync code and from a thread that is already running an event loop:
    the span event and trace context are taken in the caller's thread (so the caller's
    current span is used), and the write runs on a private loop thread. ``close()``
    (or the context manager) stops that thread.

    Args:
        event_storage: where events go.
        tracer_provider: as for :class:`AsyncEventLogger`.
        **options: the other keywords of :class:`AsyncEventLogger`.
    """

    def __init__(
        self,
        event_storage: BaseEventStorage,
        tracer_provider: TracerProvider | None = None,
        **options: Any,
    ) -> None:
        self._async = AsyncEventLogger(event_storage, tracer_provider, **options)
        self._pid = os.getpid()
        self._start()

    def _start(self) -> None:
        self._loop = LoopThread("omniq-logger")
        self._direct = getattr(self._async.event_storage, "append_blocking", None)
        settings = self._async.batch_settings
        self._batcher: ThreadBatcher | None = None
        if settings is not None:
            self._batcher = ThreadBatcher(self._store, settings, self._async.count_dropped)
            _BATCHING.add(self)

    def _after_fork(self) -> None:
        self._pid = os.getpid()
        self._async.after_fork()
        self._start()  # the parent's loop thread and writer thread do not exist here

    @property
    def stats(self) -> LoggerStats:
        """What the logger did (see :class:`LoggerStats`)."""
        return self._async.stats

    @property
    def event_storage(self) -> BaseEventStorage:
        """The storage events go to."""
        return self._async.event_storage

    def log_event(self, event: TaskEvent) -> None:
        """Store one event; return once it is durable and visible to processors.

        With ``batch=True``, return once it is queued for the background writer.
        """
        prepared = self._async.prepare(event)
        if self._pid != os.getpid():
            self._after_fork()
        if self._batcher is not None:
            self._batcher.put([prepared])
        else:
            self._store([prepared])

    def log_events(self, events: Sequence[TaskEvent]) -> None:
        """Store a batch of events in one write, in order (or queue them, batching)."""
        prepared = [self._async.prepare(event) for event in events]
        if self._pid != os.getpid():
            self._after_fork()
        if self._batcher is not None:
            self._batcher.put(prepared)
        else:
            self._store(prepared)

    def _store(self, prepared: list[TaskEvent]) -> None:
        direct = self._direct
        if direct is not None and not self._async.buffered:
            try:
                direct(prepared)
            except Exception:
                pass  # fall through to the async path, which applies the policy
            else:
                self._async.stats.logged += len(prepared)
                return
        self._loop.run(self._async.store(prepared))

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
        return self._loop.run(self._async.flush(timeout))

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
            self._loop.run(self._async.aclose())
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
