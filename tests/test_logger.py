"""AsyncEventLogger: storing, span events on the caller's span, trace context, failure policy."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import structlog
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from omniq_observe.backend import BaseEventStorage, MemoryBackend, SQLiteBackend
from omniq_observe.events import AsyncEventLogger, EventLogger
from omniq_observe.exceptions import ConfigurationError, InvalidEventError, StorageError
from omniq_observe.models.event import EventType, TaskEvent

UTC = timezone.utc


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[trace.Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("tests")
    provider.shutdown()


async def test_log_event_returns_once_stored_and_visible(backend: BaseEventStorage) -> None:
    logger = AsyncEventLogger(event_storage=backend)
    event = TaskEvent(task_id="t", event_type="ENQUEUED", details={"queue_name": "q"})
    await logger.log_event(event)
    assert [s.event for s in await backend.read_after(None, 10)] == [event]
    assert logger.stats.logged == 1


async def test_log_events_stores_a_batch_in_order(backend: BaseEventStorage) -> None:
    logger = AsyncEventLogger(event_storage=backend)
    batch = [TaskEvent(task_id="t", event_type=t) for t in ("ENQUEUED", "STARTED", "COMPLETED")]
    await logger.log_events(batch)
    assert [s.event.event_type for s in await backend.read_after(None, 10)] == [
        "ENQUEUED",
        "STARTED",
        "COMPLETED",
    ]
    assert logger.stats.logged == 3


async def test_not_a_task_event_is_refused() -> None:
    logger = AsyncEventLogger(event_storage=MemoryBackend())
    with pytest.raises(InvalidEventError) as info:
        await logger.log_event({"task_id": "t"})  # type: ignore[arg-type]
    assert info.value.field == "event"
    assert "got dict" in str(info.value)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("retry_interval", 0), ("retry_interval", -1.0), ("retry_interval", float("nan")),
     ("retry_interval", True), ("max_retry_interval", float("inf")),
     ("max_retry_interval", "2")],
)
def test_bad_retry_intervals_name_the_setting_and_value(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncEventLogger(MemoryBackend(), **{setting: value})  # type: ignore[arg-type]
    assert info.value.setting == setting
    wanted = "a finite positive number" if value == float("inf") else "a positive number"
    assert str(info.value) == f"{setting} must be {wanted} of seconds, got {value!r}"


def test_retry_intervals_are_settings() -> None:
    logger = AsyncEventLogger(MemoryBackend(), retry_interval=1, max_retry_interval=30)
    assert (logger.retry_interval, logger.max_retry_interval) == (1.0, 30.0)
    assert (type(logger.retry_interval), type(logger.max_retry_interval)) == (float, float)


def test_bad_settings() -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncEventLogger(event_storage="memory://")  # type: ignore[arg-type]
    assert info.value.setting == "event_storage"
    with pytest.raises(ConfigurationError) as info:
        AsyncEventLogger(MemoryBackend(), on_storage_error="ignore")
    assert "'ignore'" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        AsyncEventLogger(MemoryBackend(), buffer_size=0)
    assert info.value.setting == "buffer_size"


@pytest.mark.parametrize("bad", [True, float("nan"), 0, -1])
def test_a_bad_buffer_size_is_refused_with_its_value(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncEventLogger(MemoryBackend(), buffer_size=bad)  # type: ignore[arg-type]
    assert str(info.value) == f"buffer_size must be a positive integer, got {bad!r}"
    assert (info.value.setting, info.value.value) == ("buffer_size", bad)


async def test_span_event_on_the_callers_span(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    logger = AsyncEventLogger(event_storage=MemoryBackend())
    ts = datetime(2024, 6, 1, 8, 30, 0, 123456, tzinfo=UTC)
    event = TaskEvent(
        task_id="task-1",
        event_type=EventType.FAILED,
        timestamp=ts,
        details={
            "queue_name": "emails",
            "worker_id": "w-7",
            "attempt": 2,
            "error": "ValueError: bad input",
            "ratio": 0.5,
            "ok": False,
            "nested": {"not": "primitive"},
            "items": [1, 2],
            "none": None,
            "api_token": "s3cret",
        },
        event_id="evt-1",
    )
    with tracer.start_as_current_span("caller"):
        await logger.log_event(event)
    [span] = exporter.get_finished_spans()
    [span_event] = span.events
    assert span_event.name == "omniq.task.failed"
    assert span_event.timestamp == 1_717_230_600_123_456_000
    assert dict(span_event.attributes or {}) == {
        "omniq.task.id": "task-1",
        "omniq.event.id": "evt-1",
        "omniq.event.type": "FAILED",
        "messaging.destination.name": "emails",
        "omniq.worker.id": "w-7",
        "omniq.task.attempt": 2,
        "error.type": "ValueError",
        "omniq.details.queue_name": "emails",
        "omniq.details.worker_id": "w-7",
        "omniq.details.attempt": 2,
        "omniq.details.error": "ValueError: bad input",
        "omniq.details.ratio": 0.5,
        "omniq.details.ok": False,
        "omniq.details.api_token": "[REDACTED]",
    }


async def test_span_event_names_and_long_strings_truncated(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    logger = AsyncEventLogger(event_storage=MemoryBackend(), max_attribute_length=10)
    with tracer.start_as_current_span("caller"):
        await logger.log_events(
            [
                TaskEvent(task_id="t", event_type="expired", details={"reason": "x" * 50}),
                TaskEvent(task_id="t", event_type=EventType.TIMEOUT),
            ]
        )
    [span] = exporter.get_finished_spans()
    assert [e.name for e in span.events] == ["omniq.task.expired", "omniq.task.timeout"]
    assert span.events[0].attributes["omniq.details.reason"] == "x" * 9 + "…"  # type: ignore[index]
    assert span.events[1].attributes["error.type"] == "timeout"  # type: ignore[index]


async def test_callers_trace_context_is_stored_with_the_event(
    backend: BaseEventStorage, tracer: trace.Tracer
) -> None:
    logger = AsyncEventLogger(event_storage=backend)
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with tracer.start_as_current_span("caller") as span:
            await logger.log_event(TaskEvent(task_id="t", event_type="ENQUEUED"))
            ctx = span.get_span_context()
    finally:
        context.detach(token)
    [stored] = await backend.read_after(None, 10)
    assert stored.event.trace_context == {
        "traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}",
        "baggage": "tenant=acme",
    }


async def test_tracestate_is_stored(backend: BaseEventStorage) -> None:
    parent = trace.SpanContext(
        trace_id=0x1234,
        span_id=0x5678,
        is_remote=True,
        trace_flags=trace.TraceFlags(1),
        trace_state=trace.TraceState([("vendor", "value")]),
    )
    logger = AsyncEventLogger(event_storage=backend)
    with trace.use_span(trace.NonRecordingSpan(parent)):
        await logger.log_event(TaskEvent(task_id="t", event_type="ENQUEUED"))
    [stored] = await backend.read_after(None, 10)
    assert stored.event.trace_context == {
        "traceparent": "00-00000000000000000000000000001234-0000000000005678-01",
        "tracestate": "vendor=value",
    }


async def test_no_span_means_no_trace_context_and_no_error() -> None:
    backend = MemoryBackend()
    logger = AsyncEventLogger(event_storage=backend)
    await logger.log_event(TaskEvent(task_id="t", event_type="ENQUEUED"))
    [stored] = await backend.read_after(None, 10)
    assert stored.event.trace_context == {}


async def test_given_trace_context_is_kept(tracer: trace.Tracer) -> None:
    backend = MemoryBackend()
    logger = AsyncEventLogger(event_storage=backend)
    given = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    with tracer.start_as_current_span("caller"):
        await logger.log_event(TaskEvent(task_id="t", event_type="X", trace_context=given))
    [stored] = await backend.read_after(None, 10)
    assert stored.event.trace_context == given


async def test_sampled_out_span_gets_no_event_but_keeps_context(
    exporter: InMemorySpanExporter,
) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = MemoryBackend()
    logger = AsyncEventLogger(event_storage=backend, tracer_provider=provider)
    with provider.get_tracer("t").start_as_current_span("caller") as span:
        assert span.is_recording() is False
        await logger.log_event(TaskEvent(task_id="t", event_type="X"))
    assert exporter.get_finished_spans() == ()
    [stored] = await backend.read_after(None, 10)
    flags = int(stored.event.trace_context["traceparent"].rsplit("-", 1)[1], 16)
    assert flags & 1 == 0  # the sampled flag is off


async def test_logger_never_configures_a_global_tracer_provider() -> None:
    before = trace.get_tracer_provider()
    provider = TracerProvider()
    logger = AsyncEventLogger(event_storage=MemoryBackend(), tracer_provider=provider)
    await logger.log_event(TaskEvent(task_id="t", event_type="X"))
    assert trace.get_tracer_provider() is before
    assert logger.tracer_provider is provider


def lock_database(path: Path) -> sqlite3.Connection:
    """Hold SQLite's write lock from another connection, as a busy process would."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


async def test_storage_failure_raises_storage_error_with_cause(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "busy.db", busy_timeout=0.05)
    logger = AsyncEventLogger(event_storage=backend)
    await logger.log_event(TaskEvent(task_id="t", event_type="X"))
    lock = lock_database(backend.path)
    try:
        with pytest.raises(StorageError) as info:
            await logger.log_event(TaskEvent(task_id="t", event_type="Y"))
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert "locked" in str(info.value)
        assert logger.stats.storage_errors == 1
        assert logger.buffered == 0
    finally:
        lock.close()
    await logger.log_event(TaskEvent(task_id="t", event_type="Z"))
    assert [s.event.event_type for s in await backend.read_after(None, 10)] == ["X", "Z"]
    await backend.close()


async def test_non_storage_errors_are_wrapped_in_storage_error() -> None:
    class BrokenStorage(MemoryBackend):
        async def append(self, events: object) -> None:  # type: ignore[override]
            raise ConnectionResetError("peer went away")

    logger = AsyncEventLogger(event_storage=BrokenStorage())
    with pytest.raises(StorageError) as info:
        await logger.log_event(TaskEvent(task_id="t", event_type="X"))
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert "ConnectionResetError: peer went away" in str(info.value)


async def test_buffer_policy_keeps_order_drains_when_storage_returns_and_counts_drops(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(tmp_path / "busy.db", busy_timeout=0.05)
    log = structlog.testing.CapturingLogger()
    logger = AsyncEventLogger(event_storage=backend, on_storage_error="buffer", buffer_size=3,
                              retry_interval=0.01, logger=log)
    await logger.log_event(TaskEvent(task_id="t", event_type="A"))
    lock = lock_database(backend.path)
    try:
        for name in ("B", "C", "D", "E", "F"):
            await logger.log_event(TaskEvent(task_id="t", event_type=name))  # never raises
        assert logger.buffered == 3
        assert logger.stats.dropped == 2
        assert logger.stats.buffered == 3
    finally:
        lock.close()
    assert await logger.flush(timeout=10) is True
    assert logger.buffered == 0
    assert [s.event.event_type for s in await backend.read_after(None, 10)] == ["A", "B", "C", "D"]
    assert logger.stats.logged == 4
    warnings = [(c.args, c.kwargs) for c in log.calls if c.method_name == "warning"]
    locked = "BackendUnavailableError: SQLite write failed: database is locked"
    assert warnings == [
        (("omniq.events_buffered",), {"events": 1, "error": locked}),
        (("omniq.retry_buffer_full",), {"dropped": 1}),
        (("omniq.retry_buffer_full",), {"dropped": 1}),
    ]
    await logger.log_event(TaskEvent(task_id="t", event_type="G"))
    assert await backend.count() == 5
    await logger.aclose()
    await backend.close()


async def test_aclose_gives_up_on_a_dead_storage_and_counts_what_it_drops(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(tmp_path / "busy.db", busy_timeout=0.01)
    await backend.append([TaskEvent(task_id="t", event_type="A")])
    lock = lock_database(backend.path)
    try:
        async with AsyncEventLogger(
            event_storage=backend, on_storage_error="buffer", buffer_size=10
        ) as logger:
            await logger.log_event(TaskEvent(task_id="t", event_type="B"))
            assert await logger.flush(timeout=0.05) is False
            await logger.aclose(timeout=0.05)
        assert logger.buffered == 0
        assert logger.stats.dropped == 1
    finally:
        lock.close()
    await backend.close()


async def test_tracer_provider_gives_an_untraced_enqueue_a_producer_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    storage = MemoryBackend()
    logger = AsyncEventLogger(event_storage=storage, tracer_provider=provider)
    at = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    enqueued = TaskEvent(
        task_id="t1", event_type="ENQUEUED", timestamp=at, details={"queue_name": "emails"}
    )
    await logger.log_event(enqueued)
    await logger.log_event(TaskEvent(task_id="t1", event_type="STARTED", timestamp=at))

    (span,) = exporter.get_finished_spans()  # only the ENQUEUED gets one
    assert span.name == "send emails"
    assert span.kind == trace.SpanKind.PRODUCER
    assert span.start_time == span.end_time == 1777636800123456000
    assert dict(span.attributes or {}) == {
        "messaging.system": "omniq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "emails",
        "messaging.message.id": "t1",
    }
    assert [e.name for e in span.events] == ["omniq.task.enqueued"]
    ctx = span.get_span_context()
    stored = (await storage.task_history("t1"))[0]
    assert stored.trace_context == {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-"
                                    f"{int(ctx.trace_flags):02x}"}


async def test_no_producer_span_inside_the_callers_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    logger = AsyncEventLogger(event_storage=MemoryBackend(), tracer_provider=provider)
    with provider.get_tracer("app").start_as_current_span("request"):
        await logger.log_event(TaskEvent(task_id="t1", event_type="ENQUEUED"))
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]


async def test_a_type_one_edit_from_a_known_one_is_stored_and_warned_about_once() -> None:
    storage = MemoryBackend()
    logger = AsyncEventLogger(storage)
    with structlog.testing.capture_logs() as logs:
        for kind in ("COMPLTED", "COMPLTED", "STRATED", "PROGRESS", "COMPLETED"):
            await logger.log_event(TaskEvent(task_id="t", event_type=kind))
    stored = [s.event.event_type for s in await storage.read_after(None, 10)]
    assert stored == ["COMPLTED", "COMPLTED", "STRATED", "PROGRESS", "COMPLETED"]
    assert logs == [
        {"event": "omniq.unknown_event_type", "event_type": "COMPLTED",
         "suggestion": "COMPLETED", "log_level": "warning"},
        {"event": "omniq.unknown_event_type", "event_type": "STRATED",
         "suggestion": "STARTED", "log_level": "warning"},
    ]


async def test_the_loggers_own_lines_go_to_the_logger_passed() -> None:
    log = structlog.testing.CapturingLogger()
    logger = AsyncEventLogger(MemoryBackend(), logger=log)
    with structlog.testing.capture_logs() as default_path:
        await logger.log_event(TaskEvent(task_id="t", event_type="STRATED"))
    assert default_path == []
    assert log.calls == [structlog.testing.CapturedCall(
        "warning", ("omniq.unknown_event_type",),
        {"event_type": "STRATED", "suggestion": "STARTED"},
    )]


def test_the_sync_logger_spells_out_the_async_loggers_keywords() -> None:
    sync = inspect.signature(EventLogger).parameters
    assert list(sync) == list(inspect.signature(AsyncEventLogger).parameters) == [
        "event_storage", "tracer_provider", "on_storage_error", "buffer_size", "redact_keys",
        "max_attribute_length", "logger_provider", "otel_events", "batch", "flush_interval",
        "max_batch", "max_queue", "overflow", "retry_interval", "max_retry_interval", "logger",
    ]
    assert [p.kind for p in sync.values()].count(inspect.Parameter.VAR_KEYWORD) == 0
    for name in ("prepare", "store", "after_fork", "count_dropped"):
        assert not hasattr(EventLogger, name) and not hasattr(AsyncEventLogger, name)


def test_the_sync_logger_buffers_with_its_retry_interval_and_logs_to_its_logger(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(tmp_path / "busy.db", busy_timeout=0.05)
    log = structlog.testing.CapturingLogger()
    logger = EventLogger(backend, on_storage_error="buffer", retry_interval=0.01,
                         max_retry_interval=0.02, logger=log)
    logger.log_event(TaskEvent(task_id="t", event_type="FIRST"))
    lock = lock_database(backend.path)
    try:
        logger.log_event(TaskEvent(task_id="t", event_type="A"))  # append_blocking fails
        logger.log_event(TaskEvent(task_id="t", event_type="B"))  # queued behind it
        assert (logger.buffered, logger.stats.buffered, logger.stats.logged) == (2, 2, 1)
    finally:
        lock.close()
    assert logger.flush(timeout=10) is True
    logger.close()
    backend.close_blocking()
    assert (logger.stats.logged, logger.stats.dropped) == (3, 0)
    locked = "BackendUnavailableError: SQLite write failed: database is locked"
    assert [(c.method_name, c.args, c.kwargs) for c in log.calls if c.method_name != "debug"] == [
        ("warning", ("omniq.events_buffered",), {"events": 1, "error": locked}),
    ]

    async def stored() -> list[str]:
        async with SQLiteBackend(tmp_path / "busy.db") as reader:
            return [s.event.event_type for s in await reader.read_after(None, 10)]

    assert asyncio.run(stored()) == ["FIRST", "A", "B"]
