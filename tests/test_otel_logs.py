"""Log-based OpenTelemetry events with the real SDK: the loggers' three modes and
OTelLogsHandler, correlated with the task span TracingHandler draws."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventLogger, AsyncEventProcessor, EventLogger
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.handlers import OTelLogsHandler, TracingHandler
from omniq_observe.models.event import TaskEvent

try:  # the current name; the old one warns
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as InMemoryLogExporter
except ImportError:  # pragma: no cover - older SDKs
    from opentelemetry.sdk._logs.export import InMemoryLogExporter  # type: ignore[assignment]

T0 = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=timezone.utc)
T0_NS = 1_714_564_800_250_000_000


class OTel:
    """A real LoggerProvider and TracerProvider with in-memory exporters."""

    def __init__(self) -> None:
        self.logs = InMemoryLogExporter()
        self.logger_provider = LoggerProvider()
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = self.tracer_provider.get_tracer("tests")

    def records(self) -> list[Any]:
        return [r.log_record for r in self.logs.get_finished_logs()]


@pytest.fixture
def otel() -> Iterator[OTel]:
    o = OTel()
    yield o
    o.logger_provider.shutdown()
    o.tracer_provider.shutdown()


def failed(task: str = "t1") -> TaskEvent:
    return TaskEvent(
        task_id=task, event_type="FAILED", timestamp=T0,
        details={"queue_name": "emails", "worker_id": "w1", "attempt": 2,
                 "error": "SMTPError: 550", "password": "hunter2", "note": "x" * 20},
    )


def expected_attributes(event: TaskEvent) -> dict[str, Any]:
    return {
        "omniq.task.id": event.task_id,
        "omniq.event.id": event.event_id,
        "omniq.event.type": "FAILED",
        "messaging.destination.name": "emails",
        "omniq.worker.id": "w1",
        "omniq.task.attempt": 2,
        "error.type": "SMTPError",
        "omniq.details.queue_name": "emails",
        "omniq.details.worker_id": "w1",
        "omniq.details.attempt": 2,
        "omniq.details.error": "SMTPError…",
        "omniq.details.password": "[REDACTED]",
        "omniq.details.note": "x" * 9 + "…",
    }


async def test_log_mode_emits_one_exact_record_and_no_span_event(otel: OTel) -> None:
    logger = AsyncEventLogger(MemoryBackend(), logger_provider=otel.logger_provider,
                              otel_events="log", max_attribute_length=10)
    event = failed()
    before = time.time_ns()
    with otel.tracer.start_as_current_span("caller") as span:
        await logger.log_event(event)
    after = time.time_ns()
    [record] = otel.records()
    assert record.event_name == "omniq.task.failed"
    assert record.timestamp == T0_NS == event.timestamp_ns
    assert before <= record.observed_timestamp <= after
    assert (record.trace_id, record.span_id) == (
        span.get_span_context().trace_id, span.get_span_context().span_id
    )
    assert (record.severity_number, record.severity_text) == (SeverityNumber.WARN, "WARN")
    assert record.body is None
    assert dict(record.attributes) == expected_attributes(event)
    [finished] = otel.spans.get_finished_spans()
    assert finished.events == ()
    scope = otel.logs.get_finished_logs()[0].instrumentation_scope
    assert scope is not None and scope.name == "omniq_observe"


async def test_span_mode_is_the_default_and_emits_no_record(otel: OTel) -> None:
    logger = AsyncEventLogger(MemoryBackend(), logger_provider=otel.logger_provider)
    with otel.tracer.start_as_current_span("caller"):
        await logger.log_event(failed())
    assert otel.records() == []
    [span] = otel.spans.get_finished_spans()
    assert [e.name for e in span.events] == ["omniq.task.failed"]


async def test_both_mode_writes_the_same_attributes_twice(otel: OTel) -> None:
    logger = AsyncEventLogger(MemoryBackend(), logger_provider=otel.logger_provider,
                              otel_events="both", max_attribute_length=10)
    event = failed()
    with otel.tracer.start_as_current_span("caller"):
        await logger.log_event(event)
        await logger.log_event(TaskEvent(task_id="t2", event_type="COMPLETED", timestamp=T0))
    records = otel.records()
    [span] = otel.spans.get_finished_spans()
    assert [r.event_name for r in records] == [e.name for e in span.events] == [
        "omniq.task.failed", "omniq.task.completed"
    ]
    assert dict(records[0].attributes) == dict(span.events[0].attributes) == (
        expected_attributes(event)
    )
    assert [r.severity_number for r in records] == [SeverityNumber.WARN, SeverityNumber.INFO]
    assert {r.span_id for r in records} == {span.get_span_context().span_id}


async def test_log_mode_outside_any_span_has_no_trace_ids(otel: OTel) -> None:
    logger = AsyncEventLogger(MemoryBackend(), logger_provider=otel.logger_provider,
                              otel_events="log")
    await logger.log_event(TaskEvent(task_id="t", event_type="TIMEOUT", timestamp=T0))
    [record] = otel.records()
    assert (record.trace_id, record.span_id) == (0, 0)
    assert (record.event_name, record.severity_text) == ("omniq.task.timeout", "WARN")


async def test_sync_logger_inside_a_running_loop_keeps_the_callers_span(otel: OTel) -> None:
    with EventLogger(MemoryBackend(), logger_provider=otel.logger_provider,
                     otel_events="log") as logger:
        with otel.tracer.start_as_current_span("handler") as span:
            logger.log_event(TaskEvent(task_id="t", event_type="STARTED", timestamp=T0))
        await asyncio.sleep(0)  # still inside the running loop
    [record] = otel.records()
    assert (record.trace_id, record.span_id) == (
        span.get_span_context().trace_id, span.get_span_context().span_id
    )
    assert record.severity_number == SeverityNumber.INFO


async def test_batching_loggers_emit_in_the_callers_span(otel: OTel) -> None:
    storage = MemoryBackend()
    logger = AsyncEventLogger(storage, logger_provider=otel.logger_provider,
                              otel_events="log", batch=True)
    with otel.tracer.start_as_current_span("async caller") as first:
        await logger.log_event(TaskEvent(task_id="a", event_type="ENQUEUED", timestamp=T0))
    await logger.aclose()
    sync = EventLogger(storage, logger_provider=otel.logger_provider, otel_events="log",
                       batch=True)
    with otel.tracer.start_as_current_span("sync caller") as second:
        sync.log_event(TaskEvent(task_id="b", event_type="ENQUEUED", timestamp=T0))
    sync.close()
    assert [(r.span_id, r.event_name) for r in otel.records()] == [
        (first.get_span_context().span_id, "omniq.task.enqueued"),
        (second.get_span_context().span_id, "omniq.task.enqueued"),
    ]
    assert await storage.count() == 2


@pytest.mark.parametrize("mode", ["logs", "", None, "SPAN"])
def test_a_bad_mode_names_the_setting(mode: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncEventLogger(MemoryBackend(), otel_events=mode)
    assert info.value.setting == "otel_events"


def test_without_a_provider_the_global_one_is_used() -> None:
    script = textwrap.dedent("""
        import asyncio
        from opentelemetry._logs import set_logger_provider
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import InMemoryLogExporter, SimpleLogRecordProcessor
        from omniq_observe.backend import MemoryBackend
        from omniq_observe.events import AsyncEventLogger
        from omniq_observe.models.event import TaskEvent

        logger = AsyncEventLogger(MemoryBackend(), otel_events="log")  # before the global
        exporter = InMemoryLogExporter()
        provider = LoggerProvider()
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        set_logger_provider(provider)
        asyncio.run(logger.log_event(TaskEvent(task_id="t", event_type="ENQUEUED")))
        print([r.log_record.event_name for r in exporter.get_finished_logs()])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "['omniq.task.enqueued']"


async def test_the_handler_correlates_with_the_task_span(otel: OTel) -> None:
    storage = MemoryBackend()
    processor = AsyncEventProcessor(event_storage=storage, name="p")
    processor.register_handler(TracingHandler(tracer_provider=otel.tracer_provider))
    processor.register_handler(OTelLogsHandler(logger_provider=otel.logger_provider))
    worker_trace = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    started = TaskEvent(task_id="t", event_type="STARTED", timestamp=T0,
                        details={"worker_id": "w"}, trace_context={"traceparent": worker_trace})
    await storage.append([
        TaskEvent(task_id="t", event_type="ENQUEUED", timestamp=T0,
                  details={"queue_name": "q"}),
        started,
        TaskEvent(task_id="t", event_type="COMPLETED", timestamp=T0),
    ])
    assert await processor.process_events_once() == 3
    spans = {s.name: s.get_span_context() for s in otel.spans.get_finished_spans()}
    assert sorted(spans) == ["process q", "send q"]
    records = otel.records()
    assert [r.event_name for r in records] == [
        "omniq.task.enqueued", "omniq.task.started", "omniq.task.completed"
    ]
    enqueued, started_record, completed = records
    assert (enqueued.trace_id, enqueued.span_id) == (
        spans["send q"].trace_id, spans["send q"].span_id
    )
    assert (completed.trace_id, completed.span_id) == (
        spans["process q"].trace_id, spans["process q"].span_id
    )
    assert spans["process q"].trace_id == spans["send q"].trace_id  # one trace per task
    assert (started_record.trace_id, started_record.span_id) == (
        int("ab" * 16, 16), int("cd" * 8, 16)
    )
    assert started_record.timestamp == T0_NS
    assert dict(started_record.attributes) == {
        "omniq.task.id": "t", "omniq.event.id": started.event_id,
        "omniq.event.type": "STARTED", "omniq.worker.id": "w", "omniq.details.worker_id": "w",
    }


async def test_each_processor_owns_the_spans_its_handlers_share(otel: OTel) -> None:
    storage = MemoryBackend()
    first, second = (AsyncEventProcessor(event_storage=storage, name=n) for n in "ab")
    first.register_handler(TracingHandler(tracer_provider=otel.tracer_provider))
    first.register_handler(OTelLogsHandler(logger_provider=otel.logger_provider))
    second.register_handler(TracingHandler(tracer_provider=otel.tracer_provider))
    assert (first.task_spans.wanted, second.task_spans.wanted) == (True, False)
    done = TaskEvent(task_id="t", event_type="COMPLETED", timestamp=T0)
    await storage.append([TaskEvent(task_id="t", event_type="STARTED", timestamp=T0), done])
    assert await first.process_events_once() == 2
    [span] = otel.spans.get_finished_spans()
    assert first.task_spans.span_of(done.event_id) == span.get_span_context()
    assert await second.process_events_once() == 2
    assert second.task_spans.span_of(done.event_id) is None  # nobody asked: not written


async def test_the_handler_alone_uses_the_stored_trace_context(otel: OTel) -> None:
    storage = MemoryBackend()
    processor = AsyncEventProcessor(event_storage=storage, name="p")
    processor.register_handler(OTelLogsHandler(logger_provider=otel.logger_provider))
    logger = AsyncEventLogger(storage)
    with otel.tracer.start_as_current_span("enqueue") as span:
        await logger.log_event(failed())
    await logger.log_event(TaskEvent(task_id="t2", event_type="CANCELLED", timestamp=T0))
    assert await processor.process_events_once() == 2
    first, second = otel.records()
    assert (first.trace_id, first.span_id) == (
        span.get_span_context().trace_id, span.get_span_context().span_id
    )
    assert (first.event_name, first.severity_text) == ("omniq.task.failed", "WARN")
    assert (second.trace_id, second.span_id, second.event_name) == (0, 0, "omniq.task.cancelled")


@pytest.mark.parametrize("bad", [True, float("nan"), 0, -1])
def test_the_handler_checks_its_settings(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        OTelLogsHandler(max_attribute_length=bad)  # type: ignore[arg-type]
    assert str(info.value) == f"max_attribute_length must be a positive integer, got {bad!r}"
    assert (info.value.setting, info.value.value) == ("max_attribute_length", bad)


def test_no_global_is_set() -> None:
    from opentelemetry import _logs

    OTelLogsHandler()
    AsyncEventLogger(MemoryBackend(), otel_events="both")
    assert type(_logs.get_logger_provider()).__name__ == "ProxyLoggerProvider"
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"


def test_the_readme_otlp_example_runs_without_a_collector(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Everything over OTLP to a Collector", 1)[1]
    program = section.split("```python\n", 1)[1].split("```", 1)[0]
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=60, check=True, cwd=tmp_path)
    if "no collector" not in out.stdout:  # a collector listens: the OTLP branch ran
        assert out.stdout == "processed 6 events\n"
        return
    assert out.stdout.splitlines()[:3] == [
        "processed 6 events",
        "no collector on localhost:4318; in memory instead:",
        "  3 spans: ['send orders', 'process orders', 'process orders']",
    ]
    assert "  12 log events (6 from the logger, 6 from the handler)" in out.stdout
