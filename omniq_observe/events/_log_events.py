"""Log-based OpenTelemetry events: one LogRecord with an ``event_name`` per task event.

OpenTelemetry deprecates the Span Event API (OTEP 4430) in favour of events emitted
through the Logs API and correlated with the current span. :class:`LogEventWriter` emits
them; :class:`OTelEventWriter` is what the loggers call, writing span events, log events
or both (``otel_events="span" | "log" | "both"``).
"""

from __future__ import annotations

from opentelemetry import context
from opentelemetry._logs import LoggerProvider, LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

from omniq_observe._details import Redactor
from omniq_observe._otel import event_name, get_logger
from omniq_observe.events._spans import SpanEventWriter
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import TaskEvent

__all__ = ["OTEL_EVENT_MODES", "LogEventWriter", "OTelEventWriter", "checked_mode"]

OTEL_EVENT_MODES = ("span", "log", "both")
#: Event types logged at WARN; every other type is INFO.
_WARN_TYPES = frozenset({"FAILED", "TIMEOUT"})
_INFO = (SeverityNumber.INFO, "INFO")
_WARN = (SeverityNumber.WARN, "WARN")


def checked_mode(otel_events: object) -> str:
    """Return ``otel_events`` if it is one of :data:`OTEL_EVENT_MODES`.

    Raises:
        ConfigurationError: it is not.
    """
    if otel_events not in OTEL_EVENT_MODES:
        msg = f"otel_events must be one of {OTEL_EVENT_MODES}, got {otel_events!r}"
        raise ConfigurationError(msg, setting="otel_events", value=otel_events)
    return str(otel_events)


class LogEventWriter:
    """Emits one LogRecord per task event through an OpenTelemetry ``Logger``.

    Args:
        logger_provider: where the ``omniq_observe`` logger comes from; ``None``: the
            global provider of ``opentelemetry._logs`` (never set here). A global set
            later is still used: the API's proxy logger follows it.
    """

    def __init__(self, logger_provider: LoggerProvider | None = None) -> None:
        self.logger = get_logger(logger_provider)
        self._kinds: dict[str, tuple[str, SeverityNumber, str]] = {}

    def write(
        self, event: TaskEvent, ctx: Context, attributes: dict[str, AttributeValue]
    ) -> None:
        """Emit ``event`` as ``omniq.task.<type>``, correlated with the span of ``ctx``,
        stamped with the event's time (the observed time is now)."""
        kind = self._kinds.get(event.event_type)
        if kind is None:
            kind = self._kind(event.event_type)
        name, severity, text = kind
        self.logger.emit(LogRecord(
            timestamp=event.timestamp_ns,
            context=ctx,
            severity_number=severity,
            severity_text=text,
            attributes=attributes,
            event_name=name,
        ))

    def _kind(self, event_type: str) -> tuple[str, SeverityNumber, str]:
        """The event name and severity of an event type (cached)."""
        severity, text = _WARN if event_type in _WARN_TYPES else _INFO
        kind = (event_name(event_type), severity, text)
        if len(self._kinds) < 1000:
            self._kinds[event_type] = kind
        return kind


class OTelEventWriter:
    """Writes each task event as a span event, a log event, or both.

    Args:
        redactor: hides sensitive details keys (both kinds of events).
        max_attribute_length: string attributes are cut to this length.
        otel_events: ``"span"``, ``"log"`` or ``"both"``.
        logger_provider: for log events; see :class:`LogEventWriter`.

    Raises:
        ConfigurationError: ``otel_events`` is not a known mode.
    """

    def __init__(
        self,
        redactor: Redactor,
        max_attribute_length: int = 1024,
        otel_events: str = "span",
        logger_provider: LoggerProvider | None = None,
    ) -> None:
        self.mode = checked_mode(otel_events)
        self.spans = SpanEventWriter(redactor, max_attribute_length)
        self.to_spans = self.mode != "log"
        self.logs = None if self.mode == "span" else LogEventWriter(logger_provider)

    def write(self, event: TaskEvent, ctx: Context | None = None) -> None:
        """Write ``event`` in the caller's context (or ``ctx``), as the mode says."""
        if self.to_spans:
            self.spans.write(event, ctx)
        logs = self.logs
        if logs is not None:
            logs.write(
                event, context.get_current() if ctx is None else ctx,
                self.spans.attributes(event),
            )

    def write_span_event(self, event: TaskEvent, ctx: Context) -> None:
        """Write ``event`` on the span of ``ctx`` only if span events are on."""
        if self.to_spans:
            self.spans.write(event, ctx)
