"""Log-based OpenTelemetry events: ``log_event`` in ``"log"`` mode against hand-written code.

Both sides run in the same process on the same events (five details each, inside a current
span), with a real SDK ``LoggerProvider`` and a ``SimpleLogRecordProcessor`` whose exporter
drops the records, so the row measures building and emitting, not exporting:

* ours: ``AsyncEventLogger(MemoryBackend(), otel_events="log").log_event(event)``;
* hand-written: what a user would write for the same output: the same attributes built
  in a dict, ``logger.emit(LogRecord(...))`` with the event's name, time, severity and the
  current context, then ``await storage.append([event])`` into the same kind of backend.

Target (issue 18): ratio 0.8 or better.

Run: ``python bench/run.py --only otel-logs`` (or ``python bench/bench_otel_logs.py``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Bench
from opentelemetry import context, trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventLogger
from omniq_observe.models.event import TaskEvent

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
_KINDS = ("ENQUEUED", "STARTED", "COMPLETED", "FAILED")


class _Drop(LogRecordExporter):
    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _provider() -> LoggerProvider:
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(_Drop()))
    return provider


def make_events(n: int) -> list[TaskEvent]:
    return [
        TaskEvent(task_id=f"t{i // 4}", event_type=_KINDS[i % 4],
                  timestamp=T0 + timedelta(milliseconds=i),
                  details={"queue_name": "emails", "worker_id": "w1", "attempt": 1,
                           "error": "SMTPError: 550", "note": "hello"})
        for i in range(n)
    ]


def _in_a_span() -> object:
    span = NonRecordingSpan(SpanContext(0xAB, 0xCD, False, TraceFlags(1)))
    return context.attach(trace.set_span_in_context(span))


def ours(n: int) -> float:
    events = make_events(n)

    async def go() -> float:
        logger = AsyncEventLogger(MemoryBackend(), logger_provider=_provider(),
                                  otel_events="log")
        token = _in_a_span()
        start = time.perf_counter()
        for event in events:
            await logger.log_event(event)
        elapsed = time.perf_counter() - start
        context.detach(token)  # type: ignore[arg-type]
        return elapsed

    return asyncio.run(go())


def _attributes(event: TaskEvent) -> dict[str, Any]:
    details = event.details
    attrs: dict[str, Any] = {
        "omniq.task.id": event.task_id, "omniq.event.id": event.event_id,
        "omniq.event.type": event.event_type,
        "messaging.destination.name": details["queue_name"],
        "omniq.worker.id": details["worker_id"], "omniq.task.attempt": details["attempt"],
        "error.type": details["error"].partition(":")[0],
    }
    for key, value in details.items():
        attrs[f"omniq.details.{key}"] = value
    return attrs


def handwritten(n: int) -> float:
    events = make_events(n)

    async def go() -> float:
        storage = MemoryBackend()
        logger = _provider().get_logger("bench")
        token = _in_a_span()
        start = time.perf_counter()
        for event in events:
            warn = event.event_type in ("FAILED", "TIMEOUT")
            logger.emit(LogRecord(
                timestamp=event.timestamp_ns, context=context.get_current(),
                severity_number=SeverityNumber.WARN if warn else SeverityNumber.INFO,
                severity_text="WARN" if warn else "INFO", attributes=_attributes(event),
                event_name=f"omniq.task.{event.event_type.lower()}",
            ))
            await storage.append([event])
        elapsed = time.perf_counter() - start
        context.detach(token)  # type: ignore[arg-type]
        return elapsed

    return asyncio.run(go())


def benchmarks() -> list[Bench]:
    """The rows of the log-based events table."""
    return [
        Bench("otel-logs: log_event otel_events=log vs hand-written emit", 20_000, ours,
              handwritten, "LogRecord emit + MemoryBackend append by hand", target_ratio=0.8,
              repeats=7),
    ]


if __name__ == "__main__":
    from _harness import run_bench

    for bench in benchmarks():
        result = run_bench(bench)
        print(f"{bench.name}: {result.rate:,.1f}/s baseline "
              f"{result.baseline_rate or 0:,.1f}/s ratio {result.ratio or 0:.2f}")
