"""Span events on the caller's span, and the caller's W3C trace context for storage."""

from __future__ import annotations

from opentelemetry import baggage, context, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

from omniq_observe._semantics import Redactor, error_type_of, queue_of, truncate
from omniq_observe.models.event import TaskEvent

__all__ = ["SpanEventWriter", "current_trace_context"]

_baggage_propagator = W3CBaggagePropagator()


def current_trace_context(ctx: Context | None = None) -> dict[str, str]:
    """Return the W3C ``traceparent``/``tracestate``/``baggage`` of ``ctx`` (default: the
    current context). Empty when there is no valid span context and no baggage.
    """
    if ctx is None:
        ctx = context.get_current()
    carrier: dict[str, str] = {}
    if not ctx:  # an empty context: no span, no baggage
        return carrier
    span_context = trace.get_current_span(ctx).get_span_context()
    if span_context.is_valid:
        carrier["traceparent"] = (
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{int(span_context.trace_flags):02x}"
        )
        state = span_context.trace_state.to_header()
        if state:
            carrier["tracestate"] = state
    if baggage.get_all(ctx):
        _baggage_propagator.inject(carrier, ctx)
    return carrier


class SpanEventWriter:
    """Adds one span event per task event to the caller's current span.

    Args:
        redactor: hides sensitive details keys.
        max_attribute_length: strings longer than this are cut.
    """

    def __init__(self, redactor: Redactor, max_attribute_length: int = 1024) -> None:
        self.redactor = redactor
        self.max_attribute_length = max_attribute_length

    def write(self, event: TaskEvent, ctx: Context | None = None) -> None:
        """Add ``event`` to the current span (of ``ctx``) if that span is recording;
        cheap otherwise."""
        if ctx is None:
            ctx = context.get_current()
        if not ctx:
            return
        span = trace.get_current_span(ctx)
        if not span.is_recording():
            return
        span.add_event(
            f"omniq.task.{event.event_type.lower()}",
            attributes=self.attributes(event),
            timestamp=event.timestamp_ns,
        )

    def attributes(self, event: TaskEvent) -> dict[str, AttributeValue]:
        """Return the span-event attributes of ``event`` (primitive values only)."""
        details = event.details
        attrs: dict[str, AttributeValue] = {
            "omniq.task.id": event.task_id,
            "omniq.event.id": event.event_id,
            "omniq.event.type": event.event_type,
        }
        queue = queue_of(details)
        if queue is not None:
            attrs["messaging.destination.name"] = queue
        worker = details.get("worker_id")
        if isinstance(worker, str):
            attrs["omniq.worker.id"] = worker
        attempt = details.get("attempt")
        if isinstance(attempt, int) and not isinstance(attempt, bool):
            attrs["omniq.task.attempt"] = attempt
        if event.event_type in ("FAILED", "TIMEOUT") or "error" in details:
            attrs["error.type"] = (
                "timeout" if event.event_type == "TIMEOUT" and "error" not in details
                else error_type_of(details)
            )
        limit = self.max_attribute_length
        for key, value in details.items():
            if self.redactor.is_sensitive(key):
                attrs[f"omniq.details.{key}"] = "[REDACTED]"
            elif isinstance(value, str):
                attrs[f"omniq.details.{key}"] = truncate(value, limit)
            elif isinstance(value, (bool, int, float)):
                attrs[f"omniq.details.{key}"] = value
        return attrs
