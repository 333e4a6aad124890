"""Trace-context propagation: the producer stores W3C context, the worker opens a live span."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as context_api
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, TraceState

from omniq_observe.backend import SQLiteBackend
from omniq_observe.events import AsyncEventLogger
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import TaskEvent
from omniq_observe.propagation import extract_trace_context, inject_trace_context, task_span

T0 = datetime(2024, 5, 1, 12, 0, 0, 654321, tzinfo=timezone.utc)


@pytest.fixture
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


def started(**trace_context: str) -> TaskEvent:
    return TaskEvent(task_id="t1", event_type="STARTED", timestamp=T0,
                     details={"queue_name": "emails", "worker_id": "w-1", "attempt": 2},
                     trace_context=dict(trace_context))


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_inject_stores_traceparent_tracestate_and_baggage(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tp, _ = provider
    parent = extract_trace_context({"traceparent": TRACEPARENT, "tracestate": "vendor=abc"})
    ctx = baggage.set_baggage("tenant", "acme", parent)
    token = context_api.attach(ctx)
    try:
        with tp.get_tracer("app").start_as_current_span("request") as span:
            event = inject_trace_context(TaskEvent(task_id="t1", event_type="ENQUEUED"))
    finally:
        context_api.detach(token)
    sc = span.get_span_context()
    assert sc.trace_state == TraceState([("vendor", "abc")])
    assert event.trace_context == {
        "traceparent": f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}",
        "tracestate": "vendor=abc",
        "baggage": "tenant=acme",
    }
    assert sc.trace_id == 0x0AF7651916CD43DD8448EB211C80319C


def test_inject_with_an_explicit_context_and_without_any() -> None:
    event = TaskEvent(task_id="t1", event_type="ENQUEUED", trace_context={"other": "kept"})
    assert inject_trace_context(event).trace_context == {"other": "kept"}  # nothing current
    ctx = extract_trace_context({"traceparent": TRACEPARENT})
    assert inject_trace_context(event, ctx).trace_context == {
        "other": "kept", "traceparent": TRACEPARENT,
    }


def test_extract_gives_remote_parent_and_baggage() -> None:
    ctx = extract_trace_context(started(traceparent=TRACEPARENT, baggage="tenant=acme"))
    sc = trace.get_current_span(ctx).get_span_context()
    assert (sc.trace_id, sc.span_id, sc.is_remote) == (
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True,
    )
    assert baggage.get_all(ctx) == {"tenant": "acme"}
    empty = extract_trace_context(started(traceparent="garbage"))
    assert not trace.get_current_span(empty).get_span_context().is_valid


def test_task_span_is_a_live_consumer_span_under_the_stored_parent(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tp, exporter = provider
    event = started(traceparent=TRACEPARENT, baggage="tenant=acme")
    with task_span(event, tp) as span:
        assert trace.get_current_span() is span
        assert baggage.get_baggage("tenant") == "acme"
        with tp.get_tracer("worker").start_as_current_span("send email"):
            pass
    assert trace.get_current_span() is trace.INVALID_SPAN
    child, task = exporter.get_finished_spans()
    assert task.name == "process emails"
    assert task.kind is SpanKind.CONSUMER
    assert task.start_time == event.timestamp_ns
    assert task.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert task.parent is not None and task.parent.span_id == 0xB7AD6B7169203331
    assert child.parent is not None and child.parent.span_id == task.context.span_id
    assert dict(task.attributes or {}) == {
        "messaging.system": "omniq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "emails",
        "messaging.message.id": "t1",
        "omniq.worker.id": "w-1",
        "omniq.task.attempt": 2,
    }
    assert task.status.status_code is StatusCode.UNSET


def test_task_span_records_an_exception(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tp, exporter = provider
    with pytest.raises(KeyError), task_span(started(), tp):
        raise KeyError("missing")
    (span,) = exporter.get_finished_spans()
    assert span.parent is None  # nothing stored: a new trace
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    assert span.events[0].attributes["exception.type"] == "KeyError"  # type: ignore[index]


def test_task_span_link_mode_keeps_baggage(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tp, exporter = provider
    with task_span(started(traceparent=TRACEPARENT, baggage="k=v"), tp, link_mode="link",
                   attributes={"app.extra": 1}):
        assert baggage.get_baggage("k") == "v"
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.context.trace_id != 0x0AF7651916CD43DD8448EB211C80319C
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
        (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)
    ]
    assert dict(span.attributes or {})["app.extra"] == 1


def test_task_span_rejects_a_bad_link_mode() -> None:
    with pytest.raises(ConfigurationError, match="link_mode") as info, task_span(
        started(), TracerProvider(), link_mode="sibling"
    ):
        pass
    assert info.value.value == "sibling"


async def test_producer_to_worker_through_storage(
    provider: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Path,
) -> None:
    """The request's context goes through SQLite and the worker's span joins its trace."""
    tp, exporter = provider
    async with SQLiteBackend(tmp_path / "e.db") as storage:
        logger = AsyncEventLogger(storage)
        with tp.get_tracer("app").start_as_current_span("request") as request:
            await logger.log_event(TaskEvent(task_id="t1", event_type="ENQUEUED",
                                             details={"queue_name": "emails"}))
        (stored,) = await storage.task_history("t1")
    start = TaskEvent(task_id="t1", event_type="STARTED", details={"queue_name": "emails"},
                      trace_context=stored.trace_context)
    token = context_api.attach(context_api.Context())  # a worker: nothing current
    try:
        with task_span(start, tp):
            pass
    finally:
        context_api.detach(token)
    task = exporter.get_finished_spans()[-1]
    assert task.context.trace_id == request.get_span_context().trace_id
    assert task.parent is not None and task.parent.span_id == request.get_span_context().span_id


@pytest.mark.parametrize("traceparent", [
    TRACEPARENT,
    " " + TRACEPARENT,
    TRACEPARENT + "\t",
    TRACEPARENT.upper(),
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    "00-0af7651916cd43dd8448eb211c8_319c-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    TRACEPARENT + "-extra",
    "",
])
def test_extract_reads_traceparent_as_the_w3c_propagator_does(traceparent: str) -> None:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent}
    ours = trace.get_current_span(extract_trace_context(carrier)).get_span_context()
    theirs = trace.get_current_span(
        TraceContextTextMapPropagator().extract(carrier)
    ).get_span_context()
    assert ours == theirs
