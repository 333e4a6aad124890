"""What TracingHandler tells handlers registered after it: the span it just made.

Handlers run in registration order for each event, so when :class:`OTelLogsHandler` sees
an event, a :class:`TracingHandler` registered before it on the same processor has already
drawn that event's span (the attempt span an end event closes, or the producer span of
an ENQUEUED). It leaves the span's context here, keyed by the event's id, only once a
reader asked for it. The processor owns the :class:`TaskSpans` its handlers share
(``processor.task_spans``), as it owns their pairings.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import SpanContext

__all__ = ["TaskSpans", "task_spans"]


class TaskSpans:
    """The last span a TracingHandler made, and for which event."""

    __slots__ = ("event_id", "span_context", "wanted")

    def __init__(self) -> None:
        self.wanted = False  # set by a reader: only then does the tracing handler write
        self.event_id = ""
        self.span_context: SpanContext | None = None

    def record(self, event_id: str, span_context: SpanContext) -> None:
        """The tracing handler drew ``span_context`` for the event ``event_id``."""
        self.event_id = event_id
        self.span_context = span_context

    def span_of(self, event_id: str) -> SpanContext | None:
        """The span drawn for ``event_id``, if it was the last one drawn."""
        return self.span_context if self.event_id == event_id else None


def task_spans(processor: Any) -> TaskSpans:
    """The :class:`TaskSpans` shared by the handlers of ``processor``
    (``processor.task_spans``); a new one, shared with nobody, for an object without."""
    spans = getattr(processor, "task_spans", None)
    return spans if isinstance(spans, TaskSpans) else TaskSpans()
