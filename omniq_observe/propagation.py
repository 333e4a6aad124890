"""Trace-context propagation between the code that enqueues a task and the code that runs it.

The W3C trace context (``traceparent``, ``tracestate``) and W3C baggage of the enqueuer
travel with the task's events in ``TaskEvent.trace_context``. The formats are always W3C,
whatever global propagator the application set, because the stored form must be readable
by any processor later.

* Producer side: :func:`inject_trace_context` copies the current (or a given) context into
  an event. :class:`~omniq_observe.events.AsyncEventLogger` does this on its own for events
  that carry no context; call it when the event (or its ``trace_context`` dict) travels
  some other way, e.g. inside the task message.
* Worker side: :func:`task_span` opens a live ``process <queue>`` CONSUMER span whose
  parent is the event's stored context, for workers that want spans while the task runs;
  :func:`extract_trace_context` returns that context for code that starts its own spans.

Workers that are not instrumented need none of this: the processor's
:class:`~omniq_observe.handlers.tracing.TracingHandler` rebuilds the same span from events.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from omniq_observe._details import queue_of, truncate
from omniq_observe._otel import check_link_mode, get_tracer, process_attributes
from omniq_observe.models.event import TaskEvent

__all__ = ["extract_trace_context", "inject_trace_context", "task_span"]

_W3C = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
_TRACEPARENT_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_EMPTY = Context()


def inject_trace_context(event: TaskEvent, context: Context | None = None) -> TaskEvent:
    """Store the W3C ``traceparent``, ``tracestate`` and ``baggage`` of ``context`` in ``event``.

    Keys the context has replace those already in ``event.trace_context``; others stay.

    Args:
        event: the event to carry the context (usually the ENQUEUED event).
        context: the context to store; the current one when ``None``.

    Returns:
        ``event`` itself, for chaining.
    """
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=context)
    if carrier:
        event.trace_context = {**event.trace_context, **carrier}
    return event


def extract_trace_context(carrier: TaskEvent | Mapping[str, str]) -> Context:
    """Return the context stored in an event (or in a ``trace_context`` mapping).

    The returned context holds the remote parent span and the baggage; it is empty when
    nothing valid is stored. It does not derive from the current context.
    """
    mapping = carrier.trace_context if isinstance(carrier, TaskEvent) else carrier
    if not mapping:
        return _EMPTY
    traceparent = mapping.get("traceparent")
    if (
        len(mapping) != 1
        or not isinstance(traceparent, str)
        or len(traceparent) != 55
        or _TRACEPARENT_00.fullmatch(traceparent) is None
    ):
        return _W3C.extract(mapping, context=_EMPTY)  # tracestate, baggage, other versions
    # The common case, read here as the W3C propagator reads it, for half its cost.
    trace_id, span_id = int(traceparent[3:35], 16), int(traceparent[36:52], 16)
    if not trace_id or not span_id:
        return _EMPTY
    span_context = SpanContext(trace_id, span_id, is_remote=True,
                               trace_flags=TraceFlags(int(traceparent[53:], 16)))
    return trace.set_span_in_context(NonRecordingSpan(span_context), _EMPTY)


@contextmanager
def task_span(
    event: TaskEvent,
    tracer_provider: TracerProvider | None = None,
    *,
    link_mode: str = "parent",
    attributes: Mapping[str, AttributeValue] | None = None,
    max_attribute_length: int = 1024,
) -> Iterator[trace.Span]:
    """Run a block inside a live ``process <queue>`` CONSUMER span for one task attempt.

    The span starts at ``event.timestamp`` (pass the attempt's STARTED event) and ends
    when the block exits; its parent (or, with ``link_mode="link"``, its link) is the
    context stored in ``event.trace_context``, and the stored baggage is current inside
    the block. An exception leaving the block is recorded and sets status ERROR.

    Example::

        started = TaskEvent(task_id=tid, event_type="STARTED", details={"worker_id": "w1"},
                            trace_context=message.trace_context)
        with task_span(started, tracer_provider):
            await logger.log_event(started)
            ...  # run the task; spans opened here join the enqueuer's trace

    Args:
        event: the STARTED event; its details give the queue, worker id and attempt.
        tracer_provider: the provider to use; the global one when ``None``.
        link_mode: ``"parent"`` or ``"link"``.
        attributes: extra span attributes.
        max_attribute_length: string attributes are cut to this length.

    Yields:
        The span, current for the duration of the block.

    Raises:
        ConfigurationError: ``link_mode`` is invalid.
    """
    check_link_mode(link_mode)
    stored = extract_trace_context(event)
    queue = queue_of(event.details) or "default"
    attrs = _task_attributes(event, queue, max_attribute_length)
    if attributes:
        attrs.update(attributes)
    parent, links = _parent_and_links(stored, link_mode)
    span = get_tracer(tracer_provider).start_span(
        f"process {truncate(queue, max_attribute_length)}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attrs,
        links=links,
        start_time=event.timestamp_ns,
    )
    token = context_api.attach(trace.set_span_in_context(span, parent))
    try:
        with trace.use_span(span, end_on_exit=True, record_exception=True,
                            set_status_on_exception=True):
            yield span
    finally:
        context_api.detach(token)


def _task_attributes(event: TaskEvent, queue: str, limit: int) -> dict[str, AttributeValue]:
    """The ``process <queue>`` attributes of a STARTED event: its worker id and attempt
    number when its details hold them with the right types."""
    details: dict[str, Any] = event.details
    worker = details.get("worker_id")
    attempt = details.get("attempt")
    return process_attributes(
        queue,
        event.task_id,
        worker if isinstance(worker, str) else None,
        attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        limit,
    )


def _parent_and_links(stored: Context, link_mode: str) -> tuple[Context, list[Link]]:
    """The context a task span starts in, and its links, for ``link_mode``.

    ``"parent"``: the stored context itself. ``"link"``: the stored span becomes a link and
    the span starts a new trace, in a context that keeps the stored baggage.
    """
    if link_mode != "link":
        return stored, []
    stored_span = trace.get_current_span(stored).get_span_context()
    links = [Link(stored_span)] if stored_span.is_valid else []
    return trace.set_span_in_context(trace.INVALID_SPAN, stored), links
