"""TracingHandler: one OpenTelemetry span per task attempt, rebuilt from stored events.

The span is made when the attempt ends, with the exact start (STARTED) and end (the
terminal event) timestamps, so an uninstrumented worker's tasks still show up, in the
enqueuer's trace. Nothing is held open: a worker that dies leaves no half-made span,
and the memory per open attempt is the pairing's (its trace context kept as three
integers in the pairing's typed arrays: 25 bytes), bounded by its TTL.

How each case is drawn:

* COMPLETED: status UNSET (the OpenTelemetry convention for success).
* FAILED: status ERROR with ``details["error"]`` as description, ``error.type``, and an
  ``exception`` span event (``exception.type``, ``exception.message``,
  ``exception.stacktrace`` from ``details["traceback"]``, cut keeping its end).
* TIMEOUT: status ERROR, ``error.type="timeout"``.
* CANCELLED: status UNSET; ``omniq.task.status="cancelled"`` says what happened.
* RETRIED while an attempt is open ends that attempt: status ERROR, ``error.type`` from
  the details (``"retried"`` when they name none), an ``omniq.task.retried`` span event.
* RETRIED after the attempt already ended (FAILED, then RETRIED: the usual order) cannot
  go on the ended span; it becomes an ``omniq.task.retried`` span event, at the RETRIED
  time, on the *next* attempt's span, which also links to the failed attempt's span.
  A retry noted before a processor restart is not carried over it.
* A STARTED that supersedes an attempt that never ended, or an attempt open for ``ttl``
  seconds (event time) with no more events, gives a span with status ERROR and
  ``error.type="expired"`` (ending at the superseding STARTED, or at its own start).
* Duplicate deliveries (same ``event_id``) make no span. After a processor restart a
  terminal event finds its STARTED in storage history (via ``attach``).
* PRODUCER spans: for an ENQUEUED stored without a trace context (the enqueuer had no
  active span), a ``send <queue>`` PRODUCER span at the ENQUEUED time starts the trace
  and the task's spans join it (``producer_spans=False`` turns this off). That link is
  kept in memory only: after a restart, attempts of such a task start their own trace.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TracerProvider,
)
from opentelemetry.util.types import AttributeValue

from omniq_observe._details import error_type_of, truncate
from omniq_observe._otel import (
    ERROR_TYPE,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
    MESSAGING_MESSAGE_ID,
    OMNIQ_EVENT_ID,
    OMNIQ_LINK_REASON,
    OMNIQ_TASK_ATTEMPT,
    OMNIQ_TASK_MAX_ATTEMPTS,
    OMNIQ_TASK_STATUS,
    check_link_mode,
    get_tracer,
    process_attributes,
    start_producer_span,
)
from omniq_observe._validate import positive_int
from omniq_observe.events._task_spans import TaskSpans, task_spans
from omniq_observe.models.event import TaskEvent
from omniq_observe.pairing import Attempt, Observation, PairedHandler, TraceContext

__all__ = ["TracingHandler", "TracingStats"]

_MAX_REMEMBERED = 100_000  # retry notes and producer contexts kept, at most, each
_EMPTY = Context()
_UNSUCCESSFUL = frozenset({"failed", "timeout", "retried"})  # the next attempt links back
_ShapeKey = tuple[str, str | None, int, str]  # queue, worker id, attempt number, status
_Shape = tuple[str, dict[str, AttributeValue]]  # span name, attributes


@dataclass
class TracingStats:
    """What a :class:`TracingHandler` did."""

    spans: int = 0
    producer_spans: int = 0
    duplicates: int = 0
    expired: int = 0
    unpaired: int = 0  # terminal events whose STARTED never came


@dataclass(slots=True)
class _RetryNote:
    """What the next attempt of a failed task should show: the failed span, the retry."""

    previous: SpanContext | None = None
    retried: TaskEvent | None = None


def _ns(seconds: float) -> int:
    """Epoch seconds (a float exact to the microsecond) to integer nanoseconds.

    Exact for times before 2106 (2**32 s): the float's error is then under 0.25 µs, so
    adding 0.5 and flooring rounds to the microsecond.
    """
    return math.floor(seconds * 1e6 + 0.5) * 1000


def _without_type(error: str, error_type: str) -> str:
    """``"ValueError: bad"`` -> ``"bad"`` (the message without its leading type name)."""
    head, sep, rest = error.partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1] == error_type else error


def _set_timed_out(span: trace.Span, details: Mapping[str, Any]) -> None:
    """ERROR status and ``error.type="timeout"``, with the timeout when the details give it."""
    span.set_attribute(ERROR_TYPE, "timeout")
    seconds = details.get("timeout_seconds")
    description = (
        f"timed out after {seconds}s" if isinstance(seconds, (int, float)) else "timed out"
    )
    span.set_status(Status(StatusCode.ERROR, description))


def _tail(value: str, limit: int) -> str:
    """Cut ``value`` to ``limit`` characters keeping its end (a traceback's last lines)."""
    if limit <= 0 or len(value) <= limit:
        return value
    return "…" + value[len(value) - limit + 1 :]


class TracingHandler(PairedHandler):
    """Turns task events into OpenTelemetry spans: one ``process <queue>`` span per attempt.

    Register it on a processor; see the module docstring for how each case is drawn.

    Args:
        tracer_provider: the provider to use; the global one when ``None`` (this handler
            never sets a global).
        link_mode: ``"parent"``: the enqueuer's span is the task span's parent;
            ``"link"``: the task span starts a new trace linked to it.
        producer_spans: make a ``send <queue>`` PRODUCER span for an ENQUEUED stored
            without trace context, as the root of the task's trace.
        ttl: seconds (event time) an attempt may stay open before it is given up.
        reorder_window: seconds of event time an event may arrive late and pair exactly.
        max_attribute_length: string attributes and descriptions are cut to this length.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    name = "tracing"

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        link_mode: str = "parent",
        *,
        producer_spans: bool = True,
        ttl: float = 3600.0,
        reorder_window: float = 10.0,
        max_attribute_length: int = 1024,
    ) -> None:
        self.max_attribute_length = positive_int("max_attribute_length", max_attribute_length)
        self.link_mode = check_link_mode(link_mode)
        self.producer_spans = producer_spans
        super().__init__(ttl=ttl, reorder_window=reorder_window)
        self._pairing.pairing.keep_context = True
        self.stats = TracingStats()
        self._tracer = get_tracer(tracer_provider)
        self._notes: collections.OrderedDict[str, _RetryNote] = collections.OrderedDict()
        # Trace contexts of the producer spans made here, until the task's attempts use them.
        self._produced: collections.OrderedDict[str, TraceContext] = collections.OrderedDict()
        self._shapes: dict[_ShapeKey, _Shape] = {}
        self._task_spans = TaskSpans()  # the processor's, once attached (OTelLogsHandler reads it)

    def attach(self, processor: Any) -> None:
        """Share the processor's pairing (which reads storage history after a restart).

        The shared pairing is told to keep each ENQUEUED's trace context.
        """
        super().attach(processor)
        self._pairing.pairing.keep_context = True
        self._task_spans = task_spans(processor)

    def handle(self, obs: Observation) -> None:
        """Draw what one observation ends: an attempt's span, expired attempts' spans, a
        producer span; note a retry for the next attempt's span."""
        if obs.duplicate:
            self.stats.duplicates += 1
            return
        for attempt in obs.expired:
            self._expired(attempt, obs)
        event = obs.event
        if obs.closed is not None:
            self._attempt_span(obs.closed)
        elif not obs.counted:
            pass
        elif event.event_type == "ENQUEUED":
            if self.producer_spans and not event.trace_context:
                self._producer_span(event, obs.queue)
        elif event.event_type == "RETRIED":
            self._note(event.task_id).retried = event

    def _producer_span(self, event: TaskEvent, queue: str) -> None:
        span = start_producer_span(
            self._tracer, event, queue, _EMPTY, self.max_attribute_length
        )
        span.end(end_time=event.timestamp_ns)
        self.stats.producer_spans += 1
        ctx = span.get_span_context()
        if self._task_spans.wanted:
            self._task_spans.record(event.event_id, ctx)
        if ctx.is_valid:
            produced = self._produced
            produced[event.task_id] = (ctx.trace_id, ctx.span_id, int(ctx.trace_flags))
            if len(produced) > _MAX_REMEMBERED:
                produced.popitem(last=False)

    def _attempt_span(self, attempt: Attempt) -> None:
        """Draw the span of an attempt that ended, from its start to its end."""
        end_event = attempt.end_event
        if end_event is None or attempt.start is None or attempt.end is None:
            self.stats.unpaired += 1  # the STARTED never came
            return
        note = self._notes.pop(attempt.task_id, None) if self._notes else None
        span = self._start(attempt, note)
        if note is not None and note.retried is not None and note.retried is not end_event:
            self._retried_event(span, note.retried)
        end_ns = _ns(attempt.end)
        status = attempt.status
        if status == "failed":
            self._set_failed(span, end_event.details, end_ns)
        elif status == "timeout":
            _set_timed_out(span, end_event.details)
        elif status == "retried":
            self._set_retried(span, end_event)
        span.end(end_time=end_ns)
        self.stats.spans += 1
        if self._task_spans.wanted:
            self._task_spans.record(end_event.event_id, span.get_span_context())
        if status in _UNSUCCESSFUL:
            self._note(attempt.task_id).previous = span.get_span_context()
        elif self._produced:
            self._produced.pop(attempt.task_id, None)  # the task is over

    def _set_failed(self, span: trace.Span, details: Mapping[str, Any], end_ns: int) -> None:
        """ERROR status, ``error.type`` and an ``exception`` event from a FAILED's details."""
        limit = self.max_attribute_length
        error_type = error_type_of(details)
        error = details.get("error")
        text = error if isinstance(error, str) else ("" if error is None else str(error))
        span.set_attribute(ERROR_TYPE, truncate(error_type, limit))
        exception: dict[str, AttributeValue] = {
            EXCEPTION_TYPE: truncate(error_type, limit),
            EXCEPTION_MESSAGE: truncate(_without_type(text, error_type), limit),
        }
        stacktrace = details.get("traceback")
        if isinstance(stacktrace, str) and stacktrace:
            exception[EXCEPTION_STACKTRACE] = _tail(stacktrace, limit)
        span.add_event("exception", exception, timestamp=end_ns)
        span.set_status(Status(StatusCode.ERROR, truncate(text, limit) or None))

    def _set_retried(self, span: trace.Span, retried: TaskEvent) -> None:
        """ERROR status, ``error.type`` and a retry event for an attempt a RETRIED ended."""
        details = retried.details
        given = "error" in details or "error_type" in details
        error_type = truncate(error_type_of(details), self.max_attribute_length)
        span.set_attribute(ERROR_TYPE, error_type if given else "retried")
        self._retried_event(span, retried)
        span.set_status(Status(StatusCode.ERROR, "retried"))

    def _expired(self, attempt: Attempt, obs: Observation) -> None:
        if attempt.start is None:  # a terminal event whose STARTED never came
            self.stats.unpaired += 1
            return
        self.stats.expired += 1
        start_ns = _ns(attempt.start)
        event = obs.event
        superseded = event.task_id == attempt.task_id and event.event_type == "STARTED"
        end_ns = max(start_ns, event.timestamp_ns) if superseded else start_ns
        span = self._start(attempt, self._notes.pop(attempt.task_id, None))
        span.set_attribute(ERROR_TYPE, "expired")
        reason = "superseded by a new attempt" if superseded else "no terminal event within ttl"
        span.set_status(Status(StatusCode.ERROR, reason))
        span.end(end_time=end_ns)
        self.stats.spans += 1

    # -- helpers --------------------------------------------------------------------
    def _start(self, attempt: Attempt, note: _RetryNote | None) -> trace.Span:
        """Start the attempt's span at its exact start time, parented or linked."""
        task_id = attempt.task_id
        key = (attempt.queue, attempt.worker_id, attempt.attempt, attempt.status)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(key)
        attrs = shape[1].copy()
        limit = self.max_attribute_length
        attrs[MESSAGING_MESSAGE_ID] = task_id if len(task_id) <= limit else truncate(
            task_id, limit
        )
        links: list[Link] | None = None
        context = _EMPTY
        carrier = attempt.trace_context or (
            self._produced.get(task_id) if self._produced else None
        )
        if carrier:
            trace_id, span_id, flags = carrier
            parent = SpanContext(trace_id, span_id, True, TraceFlags(flags))
            if self.link_mode == "parent":
                context = trace.set_span_in_context(NonRecordingSpan(parent), _EMPTY)
            else:
                links = [Link(parent)]
        if note is not None and note.previous is not None:
            links = links or []
            links.append(Link(note.previous, {OMNIQ_LINK_REASON: "previous_attempt"}))
        return self._tracer.start_span(
            shape[0],
            context=context,
            kind=SpanKind.CONSUMER,
            attributes=attrs,
            links=links,
            start_time=_ns(attempt.start or 0.0),
        )

    def _shape(self, key: _ShapeKey) -> _Shape:
        """The span name and the attributes every attempt with this (queue, worker, number,
        status) shares (``messaging.message.id`` a placeholder, in its place); built once
        per combination."""
        queue, worker_id, number, status = key
        limit = self.max_attribute_length
        attrs = process_attributes(queue, "", worker_id, number if number > 0 else None, limit)
        attrs[OMNIQ_TASK_STATUS] = status
        shape = (f"process {truncate(queue, limit)}", attrs)
        if len(self._shapes) >= _MAX_REMEMBERED:
            self._shapes.clear()  # unbounded worker names: start over rather than grow
        self._shapes[key] = shape
        return shape

    def _retried_event(self, span: trace.Span, event: TaskEvent) -> None:
        attrs: dict[str, AttributeValue] = {OMNIQ_EVENT_ID: event.event_id}
        for key, name in (("attempt", OMNIQ_TASK_ATTEMPT),
                          ("max_attempts", OMNIQ_TASK_MAX_ATTEMPTS)):
            value = event.details.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                attrs[name] = value
        span.add_event("omniq.task.retried", attrs, timestamp=event.timestamp_ns)

    def _note(self, task_id: str) -> _RetryNote:
        notes = self._notes
        note = notes.get(task_id)
        if note is None:
            note = notes[task_id] = _RetryNote()
            if len(notes) > _MAX_REMEMBERED:
                notes.popitem(last=False)
        return note
