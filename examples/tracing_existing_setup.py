"""Task spans in an application that already has its OpenTelemetry tracing set up.

The shop below configured its TracerProvider long before omniq-observe came along: a
BatchSpanProcessor with a ConsoleSpanExporter (one line per span), plus an OTLP exporter
when ``omniq-observe[otlp]`` is installed (it sends to ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``http://localhost:4318`` by default). Its web requests enqueue tasks; the events they log
become span events on the request spans. The worker that runs the tasks is not
instrumented at all. The processor's TracingHandler rebuilds one ``process orders`` span
per attempt, from the stored events, in the trace of the request that enqueued the task.

Run: ``python examples/tracing_existing_setup.py``
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import SpanKind

from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventLogger, AsyncEventProcessor
from omniq_observe.handlers.tracing import TracingHandler
from omniq_observe.models.event import TaskEvent

SHOWN_ATTRIBUTES = ("messaging.message.id", "omniq.task.attempt", "error.type")


def one_line(span: ReadableSpan) -> str:
    """The shop's console format: one line per span, ids in hex."""
    ctx = span.context
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else "-"
    attrs = span.attributes or {}
    shown = " ".join(f"{k}={attrs[k]}" for k in SHOWN_ATTRIBUTES if k in attrs)
    events = ",".join(e.name for e in span.events) or "-"
    kind = span.kind.name
    status = span.status.status_code.name
    return (
        f"span {span.name!r} kind={kind} trace={ctx.trace_id:032x} id={ctx.span_id:016x} "
        f"parent={parent} status={status} events={events}" + (f" {shown}" if shown else "") + "\n"
    )


def configure_tracing() -> TracerProvider:
    """What the application already had: its provider, processors and exporters."""
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(formatter=one_line)))
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        print("otlp: not installed (pip install 'omniq-observe[otlp]')", flush=True)
    else:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        print("otlp: exporting", flush=True)
    trace.set_tracer_provider(provider)  # the application's choice, not the library's
    return provider


async def run_worker(logger: AsyncEventLogger, task_id: str, fail_first: bool) -> None:
    """An uninstrumented worker: it only logs lifecycle events (with simulated times)."""
    t = datetime.now(timezone.utc)

    async def log(kind: str, after_ms: int, **details: object) -> None:
        when = t + timedelta(milliseconds=after_ms)
        await logger.log_event(TaskEvent(task_id=task_id, event_type=kind, timestamp=when,
                                         details=dict(details)))

    if fail_first:
        await log("STARTED", 10, worker_id="worker-1", attempt=1)
        await log("FAILED", 60, error="ConnectionError: payment gateway unreachable",
                  traceback="Traceback (most recent call last):\n  ...\n"
                            "ConnectionError: payment gateway unreachable")
        await log("RETRIED", 70, attempt=1, max_attempts=3)
        await log("STARTED", 100, worker_id="worker-2", attempt=2)
    else:
        await log("STARTED", 10, worker_id="worker-1", attempt=1)
    await log("COMPLETED", 350, result="ok")


async def main() -> None:
    provider = configure_tracing()
    tracer = trace.get_tracer("shop.web")
    storage = MemoryBackend()  # sqlite:///..., redis://... work the same
    logger = AsyncEventLogger(event_storage=storage)

    for order in (1, 2):  # two web requests, each enqueuing one task
        with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER,
                                          attributes={"shop.order": order}):
            await logger.log_event(TaskEvent(task_id=f"order-{order}", event_type="ENQUEUED",
                                             details={"queue_name": "orders"}))

    await run_worker(logger, "order-1", fail_first=False)
    await run_worker(logger, "order-2", fail_first=True)

    processor = AsyncEventProcessor(event_storage=storage, name="tracing")
    processor.register_handler(TracingHandler())  # the application's global provider
    handled = await processor.process_events_once()
    provider.shutdown()  # flushes the batch processors
    print(f"handled {handled} events", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")
    asyncio.run(main())
