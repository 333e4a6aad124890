"""omniq-observe's OpenTelemetry conventions: one set of names, one producer span."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import messaging_attributes
from opentelemetry.trace import SpanKind

from omniq_observe import _otel
from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventLogger
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.handlers.otel_logs import OTelLogsHandler
from omniq_observe.handlers.otel_metrics import OTelMetricsHandler
from omniq_observe.handlers.tracing import TracingHandler
from omniq_observe.models.event import TaskEvent

T0 = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def exported() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def shape(span: ReadableSpan) -> tuple[object, ...]:
    scope = span.instrumentation_scope
    assert scope is not None
    return (span.name, span.kind, span.start_time, span.end_time, dict(span.attributes or {}),
            scope.name, scope.version, scope.schema_url)


def test_messaging_names_are_the_semantic_conventions() -> None:
    """The development-status names fixed here are the ones semconv still ships."""
    assert (
        _otel.MESSAGING_SYSTEM, _otel.MESSAGING_OPERATION_TYPE, _otel.MESSAGING_OPERATION_NAME,
        _otel.MESSAGING_DESTINATION_NAME, _otel.MESSAGING_MESSAGE_ID,
    ) == (
        messaging_attributes.MESSAGING_SYSTEM, messaging_attributes.MESSAGING_OPERATION_TYPE,
        messaging_attributes.MESSAGING_OPERATION_NAME,
        messaging_attributes.MESSAGING_DESTINATION_NAME, messaging_attributes.MESSAGING_MESSAGE_ID,
    ) == (
        "messaging.system", "messaging.operation.type", "messaging.operation.name",
        "messaging.destination.name", "messaging.message.id",
    )
    assert (_otel.ERROR_TYPE, _otel.EXCEPTION_TYPE, _otel.EXCEPTION_MESSAGE,
            _otel.EXCEPTION_STACKTRACE) == (
        "error.type", "exception.type", "exception.message", "exception.stacktrace",
    )


async def test_logger_and_tracing_handler_draw_the_same_producer_span() -> None:
    enqueued = TaskEvent(task_id="t1", event_type="ENQUEUED", timestamp=T0,
                         details={"queue_name": "emails"})
    by_logger, logger_spans = exported()
    await AsyncEventLogger(MemoryBackend(), by_logger).log_event(enqueued)
    by_handler, handler_spans = exported()
    handler = TracingHandler(by_handler)
    handler(TaskEvent(task_id="t1", event_type="ENQUEUED", timestamp=T0,
                      details={"queue_name": "emails"}))
    handler.release()

    (from_logger,) = logger_spans.get_finished_spans()
    (from_handler,) = handler_spans.get_finished_spans()
    assert shape(from_logger) == shape(from_handler) == (
        "send emails", SpanKind.PRODUCER, 1777636800123456000, 1777636800123456000,
        {
            "messaging.system": "omniq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": "emails",
            "messaging.message.id": "t1",
        },
        "omniq_observe", _otel.version(), "https://opentelemetry.io/schemas/1.27.0",
    )
    assert [e.name for e in from_logger.events] == ["omniq.task.enqueued"]
    assert list(from_handler.events) == []


async def test_the_loggers_producer_span_cuts_a_long_queue_name() -> None:
    provider, exporter = exported()
    logger = AsyncEventLogger(MemoryBackend(), provider, max_attribute_length=8)
    await logger.log_event(TaskEvent(task_id="task-0123456789", event_type="ENQUEUED",
                                     timestamp=T0, details={"queue_name": "reports-daily"}))
    (span,) = exporter.get_finished_spans()
    assert span.name == "send reports…"
    assert (span.attributes or {})["messaging.destination.name"] == "reports…"
    assert (span.attributes or {})["messaging.message.id"] == "task-01…"


def test_process_attributes_leave_out_what_is_unknown() -> None:
    assert _otel.process_attributes("q", "t1", None, 0, 1024) == {
        "messaging.system": "omniq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "q",
        "messaging.message.id": "t1",
    }
    assert _otel.process_attributes("q", "t1", "w-1", 3, 1024) == {
        **_otel.process_attributes("q", "t1", None, None, 1024),
        "omniq.worker.id": "w-1",
        "omniq.task.attempt": 3,
    }


def test_event_names() -> None:
    assert [_otel.event_name(t) for t in ("ENQUEUED", "TIMEOUT", "Custom_Thing")] == [
        "omniq.task.enqueued", "omniq.task.timeout", "omniq.task.custom_thing",
    ]


def test_invalid_link_mode_names_the_setting_and_value() -> None:
    assert [_otel.check_link_mode(m) for m in ("parent", "link")] == ["parent", "link"]
    with pytest.raises(ConfigurationError) as caught:
        _otel.check_link_mode("child")
    assert str(caught.value) == "link_mode must be one of ('parent', 'link'), got 'child'"
    assert (caught.value.setting, caught.value.value) == ("link_mode", "child")


@pytest.mark.parametrize("value", [0, -5, True, 2.5, "1024", None])
@pytest.mark.parametrize("make", ["logger", "otel_logs", "otel_metrics"])
def test_max_attribute_length_is_checked_everywhere(make: str, value: object) -> None:
    """The logger's span events, OTelLogsHandler and OTelMetricsHandler refuse the same
    values with the same message (OTelMetricsHandler once forgot the check)."""
    with pytest.raises(ConfigurationError) as caught:
        if make == "logger":
            AsyncEventLogger(MemoryBackend(), max_attribute_length=value)  # type: ignore[arg-type]
        elif make == "otel_logs":
            OTelLogsHandler(max_attribute_length=value)  # type: ignore[arg-type]
        else:
            OTelMetricsHandler(max_attribute_length=value)  # type: ignore[arg-type]
    assert (caught.value.setting, caught.value.value) == ("max_attribute_length", value)
    assert str(caught.value) == f"max_attribute_length must be a positive integer, got {value!r}"
