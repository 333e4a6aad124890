"""Span events on the caller's span, and the caller's W3C trace context for storage."""

from __future__ import annotations

from opentelemetry import baggage, context, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

from omniq_observe._details import Redactor, error_type_of, queue_of, truncate
from omniq_observe._otel import (
    ERROR_TYPE,
    MESSAGING_DESTINATION_NAME,
    OMNIQ_DETAILS_PREFIX,
    OMNIQ_EVENT_ID,
    OMNIQ_EVENT_TYPE,
    OMNIQ_TASK_ATTEMPT,
    OMNIQ_TASK_ID,
    OMNIQ_WORKER_ID,
    event_name,
)
from omniq_observe._validate import positive_int
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
        last = _last_span
        if last[0] is span_context:  # events logged in a row from one span: no reformatting
            carrier.update(last[1])
        else:
            carrier["traceparent"] = (
                f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                f"{int(span_context.trace_flags):02x}"
            )
            state = span_context.trace_state.to_header()
            if state:
                carrier["tracestate"] = state
            _remember(span_context, carrier)
    if baggage.get_all(ctx):
        _baggage_propagator.inject(carrier, ctx)
    return carrier


_last_span: tuple[object, dict[str, str]] = (None, {})


def _remember(span_context: object, carrier: dict[str, str]) -> None:
    global _last_span
    _last_span = (span_context, dict(carrier))  # one tuple store: safe across threads


class SpanEventWriter:
    """Adds one span event per task event to the caller's current span.

    Args:
        redactor: hides sensitive details keys.
        max_attribute_length: strings longer than this are cut.

    Raises:
        ConfigurationError: ``max_attribute_length`` is not a positive integer.
    """

    def __init__(self, redactor: Redactor, max_attribute_length: int = 1024) -> None:
        self.redactor = redactor
        self.max_attribute_length = positive_int("max_attribute_length", max_attribute_length)
        self._names: dict[str, tuple[str, bool]] = {}

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
            event_name(event.event_type),
            attributes=self.attributes(event),
            timestamp=event.timestamp_ns,
        )

    def attributes(self, event: TaskEvent) -> dict[str, AttributeValue]:
        """Return the span-event attributes of ``event`` (primitive values only)."""
        details = event.details
        attrs: dict[str, AttributeValue] = {
            OMNIQ_TASK_ID: event.task_id,
            OMNIQ_EVENT_ID: event.event_id,
            OMNIQ_EVENT_TYPE: event.event_type,
        }
        queue = queue_of(details)
        if queue is not None:
            attrs[MESSAGING_DESTINATION_NAME] = queue
        worker = details.get("worker_id")
        if isinstance(worker, str):
            attrs[OMNIQ_WORKER_ID] = worker
        attempt = details.get("attempt")
        if isinstance(attempt, int) and not isinstance(attempt, bool):
            attrs[OMNIQ_TASK_ATTEMPT] = attempt
        if event.event_type in ("FAILED", "TIMEOUT") or "error" in details:
            attrs[ERROR_TYPE] = (
                "timeout" if event.event_type == "TIMEOUT" and "error" not in details
                else error_type_of(details)
            )
        limit = self.max_attribute_length
        names = self._names
        for key, value in details.items():
            named = names.get(key)
            if named is None:
                named = self._name(key)
            name, sensitive = named
            if sensitive:
                attrs[name] = "[REDACTED]"
            elif type(value) is str:
                attrs[name] = value if len(value) <= limit else truncate(value, limit)
            elif isinstance(value, (bool, int, float, str)):
                attrs[name] = truncate(value, limit) if isinstance(value, str) else value
        return attrs

    def _name(self, key: str) -> tuple[str, bool]:
        """The attribute name of a details key and whether it is redacted (cached)."""
        named = (OMNIQ_DETAILS_PREFIX + key, self.redactor.is_sensitive(key))
        if len(self._names) < 10_000:
            self._names[key] = named
        return named
