"""Log-based OpenTelemetry events from processed task events: :class:`OTelLogsHandler`.

One LogRecord per event, named ``omniq.task.<type in lower case>``, with the event's time,
severity INFO (WARN for FAILED and TIMEOUT) and the same attributes, limits and redaction
as the logger's span events. With it, :class:`~omniq_observe.handlers.TracingHandler` and
:class:`~omniq_observe.handlers.OTelMetricsHandler`, everything goes out over OTLP and no
structlog set-up is needed.

Correlation: when a ``TracingHandler`` is registered on the same processor before this
handler, the record of an event that ends an attempt carries the trace and span ids of the
task span drawn for it, and an ENQUEUED's record those of its ``send`` producer span.
Other records carry the trace context stored with the event (the span that was current
where it was logged), or none.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import LoggerProvider
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan

from omniq_observe._details import DEFAULT_REDACT_KEYS, Redactor
from omniq_observe.events._log_events import LogEventWriter
from omniq_observe.events._spans import SpanEventWriter
from omniq_observe.events._task_spans import TaskSpans, task_spans
from omniq_observe.models.event import TaskEvent
from omniq_observe.propagation import extract_trace_context

__all__ = ["OTelLogsHandler"]

_EMPTY = Context()


class OTelLogsHandler:
    """Emits one log-based OpenTelemetry event per processed task event.

    Args:
        logger_provider: where the ``omniq_observe`` logger comes from; ``None``: the
            global provider of ``opentelemetry._logs`` (this handler never sets one).
        redact_keys: details keys (substrings) whose values are hidden.
        max_attribute_length: string attributes are cut to this length.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    name = "otel_logs"

    def __init__(
        self,
        logger_provider: LoggerProvider | None = None,
        *,
        redact_keys: Iterable[str] = DEFAULT_REDACT_KEYS,
        max_attribute_length: int = 1024,
    ) -> None:
        self._attributes = SpanEventWriter(Redactor(redact_keys), max_attribute_length).attributes
        self._writer = LogEventWriter(logger_provider)
        self._spans: TaskSpans | None = None

    def attach(self, processor: Any) -> None:
        """Called by ``register_handler``: ask the processor's TracingHandler (if any) for
        the spans it draws."""
        self._spans = task_spans(processor)
        self._spans.wanted = True

    def __call__(self, event: TaskEvent) -> None:
        """Emit ``event`` as a log-based event."""
        self._writer.write(event, self._context(event), self._attributes(event))

    def _context(self, event: TaskEvent) -> Context:
        spans = self._spans
        if spans is not None:
            made = spans.span_of(event.event_id)
            if made is not None:
                return trace.set_span_in_context(NonRecordingSpan(made), _EMPTY)
        if event.trace_context:
            return extract_trace_context(event.trace_context)
        return _EMPTY
