"""EventLogger / EventProcessor: blocking wrappers from plain code, from inside a running
loop, keeping the caller's OpenTelemetry span, and releasing their threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import wait_until
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from omniq_observe.backend import BaseEventStorage, MemoryBackend, SQLiteBackend
from omniq_observe.events import EventLogger, EventProcessor
from omniq_observe.models.event import TaskEvent


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseEventStorage]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    backend = SQLiteBackend(tmp_path / "sync.db")
    yield backend
    backend.close_blocking()


@pytest.fixture
def traced() -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("tests"), exporter
    provider.shutdown()


def test_sync_logger_and_processor_from_plain_code(storage: BaseEventStorage) -> None:
    handled: list[TaskEvent] = []
    events = [TaskEvent(task_id="t", event_type=t) for t in ("ENQUEUED", "STARTED", "COMPLETED")]
    logger, processor = EventLogger(event_storage=storage), EventProcessor(event_storage=storage)
    with logger, processor:
        logger.log_event(events[0])
        logger.log_events(events[1:])
        processor.register_handler(handled.append)
        assert processor.process_events_once() == 3
        assert processor.process_events_once() == 0
        assert logger.stats.logged == 3
    assert handled == events


async def test_sync_wrappers_work_inside_a_running_loop_and_keep_the_callers_span(
    storage: BaseEventStorage, traced: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = traced
    probe = asyncio.sleep(0)
    with pytest.raises(RuntimeError):  # why the wrappers cannot use asyncio.run here
        asyncio.run(probe)
    probe.close()
    handled: list[TaskEvent] = []
    logger = EventLogger(event_storage=storage)
    processor = EventProcessor(event_storage=storage)
    processor.register_handler(handled.append)
    try:
        with tracer.start_as_current_span("caller") as span:
            logger.log_event(TaskEvent(task_id="t", event_type="STARTED"))  # blocking, in-loop
            ctx = span.get_span_context()
        assert processor.process_events_once() == 1
    finally:
        logger.close()
        processor.close()
    [finished] = exporter.get_finished_spans()
    assert finished.name == "caller"
    assert [e.name for e in finished.events] == ["omniq.task.started"]
    assert handled[0].trace_context["traceparent"] == (
        f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    )


def test_sync_logger_from_another_thread_keeps_that_threads_span(
    storage: BaseEventStorage, traced: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = traced
    logger = EventLogger(event_storage=storage)
    contexts: list[trace.SpanContext] = []

    def worker() -> None:
        with tracer.start_as_current_span("worker-span") as span:
            logger.log_event(TaskEvent(task_id="w", event_type="COMPLETED"))
            contexts.append(span.get_span_context())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    logger.close()
    [finished] = exporter.get_finished_spans()
    assert finished.name == "worker-span"
    assert [e.name for e in finished.events] == ["omniq.task.completed"]
    [stored] = asyncio.run(_read_all(storage))
    assert stored.trace_context["traceparent"].split("-")[1] == f"{contexts[0].trace_id:032x}"


async def _read_all(storage: BaseEventStorage) -> list[TaskEvent]:
    return [s.event for s in await storage.read_after(None, 100)]


def test_sync_processor_start_and_stop_from_another_thread(storage: BaseEventStorage) -> None:
    handled: list[TaskEvent] = []
    processor = EventProcessor(event_storage=storage)
    processor.register_handler(handled.append)
    runner = threading.Thread(target=processor.start)
    runner.start()
    with EventLogger(event_storage=storage) as logger:
        logger.log_event(TaskEvent(task_id="t", event_type="ENQUEUED"))
        wait_until(lambda: len(handled) == 1, what="handled by the running processor")
    processor.stop()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert processor.stats.running is False
    processor.close()


def test_close_is_idempotent_and_a_closed_logger_can_be_reused(storage: BaseEventStorage) -> None:
    logger = EventLogger(event_storage=storage)
    logger.log_event(TaskEvent(task_id="t", event_type="A"))
    logger.close()
    logger.close()
    logger.log_event(TaskEvent(task_id="t", event_type="B"))  # starts what it needs again
    logger.close()
    assert [e.event_type for e in asyncio.run(_read_all(storage))] == ["A", "B"]


def test_1000_create_close_cycles_leak_no_thread(tmp_path: Path) -> None:
    storage = MemoryBackend()
    EventLogger(event_storage=storage).close()  # import-time work out of the way
    before = threading.active_count()
    for i in range(1000):
        with EventLogger(event_storage=storage) as logger:
            logger.log_event(TaskEvent(task_id=f"t{i}", event_type="STARTED"))
        with EventProcessor(event_storage=storage, name=f"p{i % 3}") as processor:
            processor.register_handler(lambda e: None)
            processor.process_events_once()
    assert threading.active_count() == before
    assert asyncio.run(storage.count()) == 1000
    for i in range(20):  # the SQLite backend's own threads go with close_blocking
        backend = SQLiteBackend(tmp_path / f"cycle{i}.db")
        with EventLogger(event_storage=backend) as logger:
            logger.log_event(TaskEvent(task_id="t", event_type="STARTED"))
        backend.close_blocking()
    assert threading.active_count() == before
