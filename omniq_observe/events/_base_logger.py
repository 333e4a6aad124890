"""What the two event loggers share: their keywords, the caller-side steps, the retry buffer.

:class:`BaseEventLogger` holds everything of :class:`~omniq_observe.events.AsyncEventLogger`
and :class:`~omniq_observe.events.EventLogger` but the way they wait (httpx's ``BaseClient``
serves ``Client`` and ``AsyncClient`` the same way): the settings, the steps that run in the
caller's thread (check the event, write its span or log event, take the trace context) and
the storage-failure policy, whose coroutines run on the caller's loop for the async logger
and on the private loop thread for the sync one.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import context, trace
from opentelemetry._logs import LoggerProvider
from opentelemetry.context import Context
from opentelemetry.trace import TracerProvider

from omniq_observe._details import DEFAULT_REDACT_KEYS, Redactor, queue_of
from omniq_observe._otel import get_tracer, start_producer_span
from omniq_observe._validate import positive_int, positive_seconds
from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.events._batch import BatchSettings, reopen_storage
from omniq_observe.events._log_events import OTelEventWriter
from omniq_observe.events._spans import current_trace_context
from omniq_observe.exceptions import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidEventError,
    StorageError,
)
from omniq_observe.models.event import EventType, TaskEvent, encode_event

__all__ = ["POLICIES", "BaseEventLogger", "LoggerStats"]

POLICIES = ("raise", "buffer")
_KNOWN_TYPES = frozenset(t.value for t in EventType)
# The retry buffer drains in batches of up to this many events (halved after a failure).
_DRAIN_BATCH = 1000


@dataclass(slots=True)
class LoggerStats:
    """What a logger did: events stored, buffered after a failure, dropped, failures."""

    logged: int = 0
    buffered: int = 0
    dropped: int = 0
    storage_errors: int = 0


class BaseEventLogger(abc.ABC):
    """The settings and the shared steps of both event loggers.

    Args: see :class:`~omniq_observe.events.AsyncEventLogger`.

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
        retry_interval: float = 0.05,
        max_retry_interval: float = 2.0,
        logger: Any = None,
    ) -> None:
        _check_settings(event_storage, on_storage_error, buffer_size)
        self.event_storage = event_storage
        self.tracer_provider = tracer_provider
        self._producer_tracer = None if tracer_provider is None else get_tracer(tracer_provider)
        self.on_storage_error = on_storage_error
        self.buffer_size = buffer_size
        self.retry_interval = positive_seconds("retry_interval", retry_interval)
        self.max_retry_interval = positive_seconds("max_retry_interval", max_retry_interval)
        self.batch_settings = (
            BatchSettings(flush_interval, max_batch, max_queue, overflow) if batch else None
        )
        self.stats = LoggerStats()
        self._log = logger if logger is not None else structlog.get_logger("omniq_observe")
        self._spans = OTelEventWriter(
            Redactor(redact_keys), max_attribute_length, otel_events, logger_provider
        )
        self._warned_types: set[str] = set()  # unknown event types warned about
        self._buffer: collections.deque[TaskEvent] = collections.deque()
        self._drain_task: asyncio.Task[None] | None = None
        self._pid = os.getpid()
        self._start()

    @abc.abstractmethod
    def _start(self) -> None:
        """Make what belongs to one process: the batching writer, the sync loop thread."""

    def _after_fork(self) -> None:
        """Start afresh in a forked child: own storage, own queue, empty retry buffer.

        Called on first use in the child; what the parent had queued is never written twice.
        """
        self._pid = os.getpid()
        self.event_storage = reopen_storage(self.event_storage)
        self.stats = LoggerStats()
        self._buffer = collections.deque()
        self._drain_task = None
        self._start()

    def _count_dropped(self, count: int) -> None:
        """Count events that were given up (a full queue, a failed batched write)."""
        self.stats.dropped += count

    @property
    def buffered(self) -> int:
        """How many events wait in the retry buffer."""
        return len(self._buffer)

    # -- in the caller's thread -------------------------------------------------------
    def _prepare(self, event: TaskEvent) -> TaskEvent:
        """Check ``event``, add it to the caller's span and attach the caller's trace context.

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
            self._log.warning("omniq.unknown_event_type", event_type=kind, suggestion=known)

    def _producer_context(self, event: TaskEvent, ctx: Context) -> Context:
        """Start and end a ``send <queue>`` PRODUCER span for an ENQUEUED logged outside
        any span; return the context with that span current."""
        tracer = self._producer_tracer
        if tracer is None or event.trace_context or (
            trace.get_current_span(ctx).get_span_context().is_valid
        ):
            return ctx
        queue = queue_of(event.details) or "default"
        span = start_producer_span(
            tracer, event, queue, ctx, self._spans.spans.max_attribute_length
        )
        ctx = trace.set_span_in_context(span, ctx)
        self._spans.write_span_event(event, ctx)  # the span event goes on the producer span
        span.end(end_time=event.timestamp_ns)
        return ctx

    # -- on a loop: the storage-failure policy ----------------------------------------
    async def _store(self, events: list[TaskEvent]) -> None:
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
                    await self._store(rest)
                raise invalid from exc
            if isinstance(exc, StorageError):
                raise exc
            msg = f"storing {len(events)} event(s) failed: {_described(exc)}"
            raise StorageError(msg) from exc
        self._log.warning("omniq.events_buffered", events=len(events), error=_described(exc))
        self._buffer_events(events)

    def _buffer_events(self, events: list[TaskEvent]) -> None:
        room = self.buffer_size - len(self._buffer)
        kept = events[: max(0, room)]
        self._buffer.extend(kept)
        self.stats.buffered += len(kept)
        dropped = len(events) - len(kept)
        if dropped:
            self.stats.dropped += dropped
            self._log.warning("omniq.retry_buffer_full", dropped=dropped)
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
                self._log.debug("omniq.retry_failed", events=len(batch), error=_described(exc))
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
        self._log.error("omniq.refused_events_dropped", dropped=dropped)
        return True

    async def _drained(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the retry buffer to empty; True if it did."""
        task = self._drain_task
        if task is None or task.done():
            return not self._buffer
        await asyncio.wait({task}, timeout=timeout)  # never raises, never cancels the task
        return not self._buffer

    async def _close_buffer(self, timeout: float) -> None:
        """Drain the retry buffer for up to ``timeout`` seconds, then stop retrying; what
        is still buffered then is dropped and counted."""
        await self._drained(timeout)
        task = self._drain_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._buffer:
            self.stats.dropped += len(self._buffer)
            self._buffer.clear()


def _check_settings(event_storage: object, on_storage_error: object, buffer_size: object) -> None:
    """Raise ConfigurationError naming the first of these settings that is invalid."""
    if not isinstance(event_storage, BaseEventStorage):
        msg = f"event_storage must be a BaseEventStorage, got {type(event_storage).__name__}"
        raise ConfigurationError(msg, setting="event_storage", value=event_storage)
    if on_storage_error not in POLICIES:
        msg = f"on_storage_error must be one of {POLICIES}, got {on_storage_error!r}"
        raise ConfigurationError(msg, setting="on_storage_error", value=on_storage_error)
    positive_int("buffer_size", buffer_size)


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
            msg = f"event {event.event_id!r:.100} cannot be encoded: {_described(exc)}"
            return InvalidEventError(msg, field="event", value=event)
    return None
