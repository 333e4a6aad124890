"""TracingHandler with the real OpenTelemetry SDK: one span per attempt, in the enqueuer's trace."""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from omniq_observe.backend import MemoryBackend, SQLiteBackend
from omniq_observe.events import AsyncEventLogger, AsyncEventProcessor
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.handlers.tracing import TracingHandler
from omniq_observe.models.event import TaskEvent
from omniq_observe.propagation import inject_trace_context

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parent.parent


def at(seconds: float, micro: int = 0) -> datetime:
    return T0 + timedelta(seconds=seconds, microseconds=micro)


def ev(task: str, kind: str, t: datetime, **details: Any) -> TaskEvent:
    return TaskEvent(task_id=task, event_type=kind, timestamp=t, details=details)


class Traced:
    """A TracerProvider of this test only, exporting to memory."""

    def __init__(self, limits: SpanLimits | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(span_limits=limits) if limits else TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        spans = self.exporter.get_finished_spans()
        return [s for s in spans if name is None or s.name == name]

    def consumer(self) -> list[ReadableSpan]:
        """The task (CONSUMER) spans, without producer spans."""
        return [s for s in self.exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]


@pytest.fixture
def traced() -> Traced:
    return Traced()


async def feed(handler: TracingHandler, events: list[TaskEvent]) -> None:
    for event in events:
        result = handler(event)
        if result is not None:
            await result
    handler.release()  # what waited for the reorder window (a processor does this itself)


def process_attrs(task: str, queue: str = "emails", worker: str = "w-1", attempt: int = 1,
                  status: str = "completed") -> dict[str, Any]:
    return {
        "messaging.system": "omniq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": task,
        "omniq.worker.id": worker,
        "omniq.task.attempt": attempt,
        "omniq.task.status": status,
    }


async def test_task_span_joins_the_enqueuers_trace_with_exact_times(traced: Traced) -> None:
    storage = MemoryBackend()
    logger = AsyncEventLogger(event_storage=storage, tracer_provider=traced.provider)
    tracer = traced.provider.get_tracer("app")
    with tracer.start_as_current_span("POST /signup") as request:
        await logger.log_event(ev("t1", "ENQUEUED", at(0), queue_name="emails"))
    started = ev("t1", "STARTED", at(1, 7), worker_id="w-1")
    completed = ev("t1", "COMPLETED", at(2, 999), result="ok")
    await logger.log_events([started, completed])  # the worker has no span: not instrumented
    processor = AsyncEventProcessor(event_storage=storage, name="tracing")
    processor.register_handler(TracingHandler(tracer_provider=traced.provider))
    assert await processor.process_events_once() == 3

    (span,) = traced.spans("process emails")
    request_ctx = request.get_span_context()
    assert span.context.trace_id == request_ctx.trace_id
    assert span.parent is not None and span.parent.span_id == request_ctx.span_id
    assert span.kind is SpanKind.CONSUMER
    assert span.start_time == started.timestamp_ns == 1714564801123463000
    assert span.end_time == completed.timestamp_ns == 1714564802124455000
    assert dict(span.attributes or {}) == process_attrs("t1")
    assert span.status.status_code is StatusCode.UNSET
    assert span.links == ()
    (request_span,) = traced.spans("POST /signup")
    assert [e.name for e in request_span.events] == ["omniq.task.enqueued"]
    assert len(traced.spans()) == 2  # no producer span: the enqueuer had a span


async def test_link_mode_starts_a_new_trace_linked_to_the_enqueuer(traced: Traced) -> None:
    handler = TracingHandler(traced.provider, link_mode="link")
    with traced.provider.get_tracer("app").start_as_current_span("request") as request:
        enqueued = inject_trace_context(ev("t1", "ENQUEUED", at(0), queue="q"))
    await feed(handler, [enqueued, ev("t1", "STARTED", at(1)), ev("t1", "COMPLETED", at(2))])
    (span,) = traced.spans("process q")
    assert span.parent is None
    assert span.context.trace_id != request.get_span_context().trace_id
    request_ctx = request.get_span_context()
    assert [(link.context.trace_id, link.context.span_id, link.context.is_remote)
            for link in span.links] == [(request_ctx.trace_id, request_ctx.span_id, True)]


TERMINALS = [
    ("COMPLETED", {"result": "ok"}, StatusCode.UNSET, None, None, []),
    (
        "FAILED",
        {"error": "ValueError: bad input", "traceback": "Traceback (most recent call last):\n..."},
        StatusCode.ERROR,
        "ValueError: bad input",
        "ValueError",
        [("exception", {
            "exception.type": "ValueError",
            "exception.message": "bad input",
            "exception.stacktrace": "Traceback (most recent call last):\n...",
        })],
    ),
    ("TIMEOUT", {"timeout_seconds": 30}, StatusCode.ERROR, "timed out after 30s", "timeout", []),
    ("CANCELLED", {"reason": "user"}, StatusCode.UNSET, None, None, []),
]


@pytest.mark.parametrize(("kind", "details", "code", "description", "error_type", "events"),
                         TERMINALS, ids=[t[0] for t in TERMINALS])
async def test_status_for_every_terminal_type(
    traced: Traced, kind: str, details: dict[str, Any], code: StatusCode,
    description: str | None, error_type: str | None, events: list[Any],
) -> None:
    handler = TracingHandler(traced.provider)
    end = ev("t1", kind, at(3, 5), **details)
    await feed(handler, [ev("t1", "ENQUEUED", at(0), queue_name="emails"),
                         ev("t1", "STARTED", at(1), worker_id="w-1"), end])
    (span,) = traced.spans("process emails")
    assert span.status.status_code is code
    assert span.status.description == description
    expected = process_attrs("t1", status=kind.lower())
    if error_type is not None:
        expected["error.type"] = error_type
    assert dict(span.attributes or {}) == expected
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == events
    assert all(e.timestamp == end.timestamp_ns for e in span.events)
    assert span.end_time == end.timestamp_ns


async def test_failed_with_explicit_error_type_and_long_strings_cut(traced: Traced) -> None:
    handler = TracingHandler(traced.provider, max_attribute_length=50)
    long_queue = "q" * 300
    traceback = "".join(f"  frame {i}\n" for i in range(100)) + "KeyError: 'missing'"
    await feed(handler, [
        ev("t1", "ENQUEUED", at(0), queue_name=long_queue),
        ev("t1", "STARTED", at(1), worker_id="w" * 80),
        ev("t1", "FAILED", at(2), error="x" * 500, error_type="mylib.Boom", traceback=traceback),
    ])
    (span,) = traced.consumer()
    assert span.name == "process " + "q" * 49 + "…"
    attrs = dict(span.attributes or {})
    assert attrs["messaging.destination.name"] == "q" * 49 + "…"
    assert attrs["omniq.worker.id"] == "w" * 49 + "…"
    assert attrs["error.type"] == "mylib.Boom"
    assert span.status.description == "x" * 49 + "…"
    (exception,) = span.events
    stacktrace = exception.attributes["exception.stacktrace"]  # type: ignore[index]
    assert stacktrace == "…" + traceback[-49:]  # the end of a traceback is what matters
    assert stacktrace.endswith("KeyError: 'missing'")
    assert exception.attributes["exception.message"] == "x" * 49 + "…"  # type: ignore[index]


async def test_attribute_values_are_valid_types(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handler = TracingHandler(traced.provider)
    odd = {"queue_name": "q", "worker_id": 42, "attempt": True, "nested": {"a": [1, {"b": None}]},
           "error": {"code": 7}, "traceback": ["frame"], "none": None}
    await feed(handler, [ev("t1", "ENQUEUED", at(0), **odd), ev("t1", "STARTED", at(1), **odd),
                         ev("t1", "FAILED", at(2), **odd)])
    await feed(handler, [ev("t2", "STARTED", at(3), **odd), ev("t2", "RETRIED", at(4), **odd),
                         ev("t2", "STARTED", at(5)), ev("t2", "TIMEOUT", at(6), **odd)])
    spans = traced.consumer()
    assert len(spans) == 3
    for span in spans:
        values = list((span.attributes or {}).values())
        for event in span.events:
            values += list((event.attributes or {}).values())
        for link in span.links:
            values += list((link.attributes or {}).values())
        assert {type(v) for v in values} <= {str, int, float, bool}
    assert [r.getMessage() for r in caplog.records if "Invalid type" in r.getMessage()] == []
    assert dict(spans[0].attributes or {})["omniq.task.attempt"] == 1  # True is no attempt
    assert spans[0].status.description == "{'code': 7}"


async def test_retried_after_failed_goes_on_the_next_attempt(traced: Traced) -> None:
    handler = TracingHandler(traced.provider)
    retried = ev("t1", "RETRIED", at(2, 500), attempt=1, max_attempts=3)
    await feed(handler, [
        ev("t1", "ENQUEUED", at(0), queue_name="emails"),
        ev("t1", "STARTED", at(1), worker_id="w-1"),
        ev("t1", "FAILED", at(2), error="OSError: down"),
        retried,
        ev("t1", "STARTED", at(3), worker_id="w-2", attempt=2),
        ev("t1", "COMPLETED", at(4)),
    ])
    first, second = traced.consumer()
    assert dict(first.attributes or {})["omniq.task.attempt"] == 1
    assert dict(second.attributes or {}) == process_attrs("t1", worker="w-2", attempt=2)
    assert first.context.trace_id == second.context.trace_id
    (event,) = second.events
    assert event.name == "omniq.task.retried"
    assert event.timestamp == retried.timestamp_ns
    assert dict(event.attributes or {}) == {
        "omniq.event.id": retried.event_id, "omniq.task.attempt": 1, "omniq.task.max_attempts": 3,
    }
    (link,) = second.links
    assert link.context == first.context
    assert dict(link.attributes or {}) == {"omniq.link.reason": "previous_attempt"}


async def test_retried_while_open_ends_the_attempt(traced: Traced) -> None:
    handler = TracingHandler(traced.provider)
    retried = ev("t1", "RETRIED", at(2), attempt=1, max_attempts=3)
    await feed(handler, [ev("t1", "ENQUEUED", at(0), queue_name="emails"),
                         ev("t1", "STARTED", at(1), worker_id="w-1"), retried])
    (span,) = traced.consumer()
    assert span.end_time == retried.timestamp_ns
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {}) == {
        **process_attrs("t1", status="retried"), "error.type": "retried",
    }
    assert [(e.name, e.timestamp) for e in span.events] == [
        ("omniq.task.retried", retried.timestamp_ns)
    ]


async def test_span_event_limit_from_span_limits() -> None:
    traced = Traced(SpanLimits(max_events=1))
    handler = TracingHandler(traced.provider)
    await feed(handler, [
        ev("t1", "STARTED", at(1), queue="q"), ev("t1", "FAILED", at(2), error="E: 1"),
        ev("t1", "RETRIED", at(3)), ev("t1", "STARTED", at(4)),
        ev("t1", "FAILED", at(5), error="E: 2", traceback="tb"),
    ])
    second = traced.spans()[1]
    assert [e.name for e in second.events] == ["exception"]  # two made, the newest kept
    assert second.dropped_events == 1


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, **(env or {})}, check=False,
    )


SUBPROCESS_EVENTS = """
    import asyncio, json
    from datetime import datetime, timezone
    from omniq_observe.models.event import TaskEvent
    from omniq_observe.handlers.tracing import TracingHandler
    def ev(kind, s, **d):
        return TaskEvent(task_id="t1", event_type=kind,
                         timestamp=datetime(2024, 1, 1, 0, 0, s, tzinfo=timezone.utc), details=d)
    EVENTS = [ev("ENQUEUED", 0, queue_name="q"), ev("STARTED", 1), ev("FAILED", 2, error="E: 1"),
              ev("RETRIED", 3), ev("STARTED", 4), ev("FAILED", 5, error="E: 2")]
    async def feed(handler):
        for e in EVENTS:
            r = handler(e)
            if r is not None:
                await r
"""


def test_span_event_limit_from_the_environment() -> None:
    result = run_python(SUBPROCESS_EVENTS + """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    asyncio.run(feed(TracingHandler(provider)))
    print(json.dumps([[len(s.events), s.dropped_events] for s in exporter.get_finished_spans()]))
    """, env={"OTEL_SPAN_EVENT_COUNT_LIMIT": "1"})
    assert result.returncode == 0, result.stderr
    # producer span: 0 events; attempt 1: exception; attempt 2: retried + exception, one dropped
    assert json.loads(result.stdout) == [[0, 0], [1, 0], [1, 1]]


def test_global_provider_fallback_and_no_global_set() -> None:
    result = run_python(SUBPROCESS_EVENTS + """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    own = InMemorySpanExporter()
    own_provider = TracerProvider()
    own_provider.add_span_processor(SimpleSpanProcessor(own))
    asyncio.run(feed(TracingHandler(own_provider)))
    untouched = type(trace.get_tracer_provider()).__name__
    handler = TracingHandler()  # made before the application sets its provider
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    asyncio.run(feed(handler))
    print(json.dumps({"untouched": untouched, "own": len(own.get_finished_spans()),
                      "global": [s.name for s in exporter.get_finished_spans()]}))
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "untouched": "ProxyTracerProvider",
        "own": 3,
        "global": ["send q", "process q", "process q"],
    }


async def test_duplicate_deliveries_make_no_duplicate_span(traced: Traced) -> None:
    handler = TracingHandler(traced.provider)
    events = [ev("t1", "ENQUEUED", at(0), queue_name="emails"), ev("t1", "STARTED", at(1)),
              ev("t1", "COMPLETED", at(2))]
    await feed(handler, events + events + [events[2]])
    assert [s.name for s in traced.spans()] == ["send emails", "process emails"]
    assert handler.stats.duplicates == 4
    assert handler.stats.spans == 1


async def test_duplicate_batch_through_the_processor(traced: Traced) -> None:
    storage = MemoryBackend()
    events = [ev("t1", "STARTED", at(1), queue="emails"), ev("t1", "COMPLETED", at(2))]
    await storage.append(events)
    await storage.append(events)  # the same event ids stored twice (a re-sent batch)
    processor = AsyncEventProcessor(storage, "p")
    processor.register_handler(TracingHandler(traced.provider))
    assert await processor.process_events_once() == 4
    assert [s.name for s in traced.spans()] == ["process emails"]


async def test_restart_pairs_with_storage_history(traced: Traced, tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    tracer = traced.provider.get_tracer("app")
    async with SQLiteBackend(db) as storage:
        logger = AsyncEventLogger(storage)
        with tracer.start_as_current_span("request") as request:
            await logger.log_event(ev("t1", "ENQUEUED", at(0), queue_name="emails"))
        started = ev("t1", "STARTED", at(1, 3), worker_id="w-1")
        await logger.log_event(started)
        before = AsyncEventProcessor(storage, "tracing")
        first = TracingHandler(traced.provider)
        before.register_handler(first)
        assert await before.process_events_once() == 2
        assert first.pairing.open_attempts == 1
    assert traced.spans("process emails") == []
    async with SQLiteBackend(db) as storage:  # a new process: nothing in memory
        completed = ev("t1", "COMPLETED", at(5, 9))
        await AsyncEventLogger(storage).log_event(completed)
        after = AsyncEventProcessor(storage, "tracing")
        after.register_handler(TracingHandler(traced.provider))
        assert await after.process_events_once() == 1
    (span,) = traced.spans("process emails")
    assert span.start_time == started.timestamp_ns
    assert span.end_time == completed.timestamp_ns
    assert span.context.trace_id == request.get_span_context().trace_id
    assert span.parent is not None and span.parent.span_id == request.get_span_context().span_id
    assert dict(span.attributes or {}) == process_attrs("t1")


async def test_terminal_before_started_out_of_order(traced: Traced) -> None:
    storage = MemoryBackend()
    completed = ev("t1", "COMPLETED", at(2))
    started = ev("t1", "STARTED", at(1), queue="emails", worker_id="w-1")
    await storage.append([completed, started])
    processor = AsyncEventProcessor(storage, "p")
    processor.register_handler(TracingHandler(traced.provider))
    await processor.process_events_once()
    (span,) = traced.spans()
    assert (span.start_time, span.end_time) == (started.timestamp_ns, completed.timestamp_ns)


async def test_open_attempts_expire_after_ttl(traced: Traced) -> None:
    handler = TracingHandler(traced.provider, ttl=60)
    stuck = ev("stuck", "STARTED", at(0), queue="emails", worker_id="w-1")
    await feed(handler, [stuck])
    later = []
    for i in range(512):  # the pairing sweeps every 1024 events
        later += [ev(f"t{i}", "STARTED", at(120), queue="emails"),
                  ev(f"t{i}", "COMPLETED", at(121))]
    await feed(handler, later)
    expired = [s for s in traced.spans() if dict(s.attributes or {})["messaging.message.id"]
               == "stuck"]
    (span,) = expired
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "no terminal event within ttl"
    assert (span.start_time, span.end_time) == (stuck.timestamp_ns, stuck.timestamp_ns)
    assert dict(span.attributes or {})["error.type"] == "expired"
    assert handler.stats.expired == 1
    assert handler.pairing.open_attempts == 0
    assert handler.pairing.tracked_tasks == 0  # memory is given back


async def test_superseded_attempt_ends_at_the_next_start(traced: Traced) -> None:
    handler = TracingHandler(traced.provider)
    second = ev("t1", "STARTED", at(5), worker_id="w-2")
    await feed(handler, [ev("t1", "STARTED", at(1), queue="q", worker_id="w-1"), second,
                         ev("t1", "COMPLETED", at(6))])
    lost, done = sorted(traced.spans(), key=lambda span: span.start_time or 0)
    assert lost.end_time == second.timestamp_ns
    assert lost.status.description == "superseded by a new attempt"
    assert done.status.status_code is StatusCode.UNSET
    assert dict(done.attributes or {})["omniq.task.attempt"] == 2


async def test_producer_span_when_the_enqueuer_had_no_span(traced: Traced) -> None:
    handler = TracingHandler(traced.provider)
    enqueued = ev("t1", "ENQUEUED", at(0), queue_name="emails")
    await feed(handler, [enqueued, ev("t1", "STARTED", at(1)), ev("t1", "COMPLETED", at(2))])
    producer, task = traced.spans()
    assert producer.name == "send emails"
    assert producer.kind is SpanKind.PRODUCER
    assert producer.parent is None
    assert (producer.start_time, producer.end_time) == (enqueued.timestamp_ns,) * 2
    assert dict(producer.attributes or {}) == {
        "messaging.system": "omniq", "messaging.operation.type": "send",
        "messaging.operation.name": "send", "messaging.destination.name": "emails",
        "messaging.message.id": "t1",
    }
    assert task.parent is not None and task.parent.span_id == producer.context.span_id
    assert task.context.trace_id == producer.context.trace_id


async def test_producer_spans_can_be_turned_off(traced: Traced) -> None:
    handler = TracingHandler(traced.provider, producer_spans=False)
    await feed(handler, [ev("t1", "ENQUEUED", at(0), queue_name="emails"),
                         ev("t1", "STARTED", at(1)), ev("t1", "COMPLETED", at(2))])
    (task,) = traced.spans()
    assert task.parent is None


async def test_common_path_is_sync_and_history_path_async(traced: Traced) -> None:
    handler = TracingHandler(traced.provider)
    handler.attach(AsyncEventProcessor(MemoryBackend(), "p"))
    assert handler(ev("t1", "ENQUEUED", at(0), queue_name="q")) is None
    assert handler(ev("t1", "STARTED", at(1))) is None
    assert handler(ev("t1", "COMPLETED", at(2))) is None
    pending = handler(ev("t2", "COMPLETED", at(3)))  # never seen: look in storage
    assert inspect.isawaitable(pending)
    await pending
    assert handler.stats.spans == 1


def test_invalid_settings_name_the_setting(traced: Traced) -> None:
    with pytest.raises(ConfigurationError, match=r"link_mode.*'child'") as info:
        TracingHandler(traced.provider, link_mode="child")
    assert info.value.setting == "link_mode"
    with pytest.raises(ConfigurationError, match="ttl"):
        TracingHandler(traced.provider, ttl=0)


@pytest.mark.parametrize("bad", [True, float("nan"), 0, -1, 2.5])
def test_a_bad_max_attribute_length_is_refused(traced: Traced, bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        TracingHandler(traced.provider, max_attribute_length=bad)  # type: ignore[arg-type]
    assert str(info.value) == f"max_attribute_length must be a positive integer, got {bad!r}"
    assert (info.value.setting, info.value.value) == ("max_attribute_length", bad)


def test_handler_never_sets_the_global_provider(traced: Traced) -> None:
    before = trace.get_tracer_provider()
    TracingHandler(traced.provider)
    TracingHandler()
    assert trace.get_tracer_provider() is before


async def test_start_times_are_exact_for_any_microsecond(traced: Traced) -> None:
    import random

    rng = random.Random(7)
    handler = TracingHandler(traced.provider, producer_spans=False)
    expected = []
    for i in range(2000):
        start = datetime(2000, 1, 1, tzinfo=timezone.utc) + timedelta(
            microseconds=rng.randrange(105 * 365 * 86_400 * 10**6)
        )  # epoch seconds as floats are exact to the microsecond until 2106 (2**32 s)
        started = ev(f"t{i}", "STARTED", start, queue="q")
        completed = ev(f"t{i}", "COMPLETED", start + timedelta(microseconds=rng.randrange(10**7)))
        await feed(handler, [started, completed])
        expected.append((started.timestamp_ns, completed.timestamp_ns))
    assert [(s.start_time, s.end_time) for s in traced.consumer()] == expected


async def test_sharing_the_pairing_with_prometheus_keeps_the_parent(traced: Traced) -> None:
    from prometheus_client import CollectorRegistry

    from omniq_observe.handlers.prometheus import PrometheusHandler

    storage = MemoryBackend()
    with traced.provider.get_tracer("app").start_as_current_span("request") as request:
        await AsyncEventLogger(storage).log_event(ev("t1", "ENQUEUED", at(0), queue_name="q"))
    await storage.append([ev("t1", "STARTED", at(1)), ev("t1", "COMPLETED", at(2))])
    processor = AsyncEventProcessor(storage, "both")
    registry = CollectorRegistry()
    processor.register_handler(PrometheusHandler(registry=registry))  # pairs first
    tracing = TracingHandler(traced.provider)
    processor.register_handler(tracing)
    assert await processor.process_events_once() == 3
    (span,) = traced.consumer()
    assert span.parent is not None and span.parent.span_id == request.get_span_context().span_id
    assert registry.get_sample_value(
        "omniq_task_duration_seconds_count", {"queue": "q", "status": "completed"}
    ) == 1
    assert tracing.pairing.tracked_tasks == 0


async def test_task_span_joins_the_loggers_producer_span(traced: Traced) -> None:
    storage = MemoryBackend()
    logger = AsyncEventLogger(event_storage=storage, tracer_provider=traced.provider)
    await logger.log_events([
        ev("t1", "ENQUEUED", at(0), queue_name="emails"),
        ev("t1", "STARTED", at(1), worker_id="w-1"),
        ev("t1", "COMPLETED", at(3)),
    ])
    processor = AsyncEventProcessor(event_storage=storage)
    processor.register_handler(TracingHandler(tracer_provider=traced.provider))
    assert await processor.process_events_once() == 3

    (producer,) = traced.spans("send emails")
    (task,) = traced.consumer()
    assert task.context.trace_id == producer.context.trace_id
    assert task.parent is not None and task.parent.span_id == producer.context.span_id
    assert len(traced.spans()) == 2  # no second producer span from the handler
