"""StructlogHandler: the fields of each line, levels, redaction, and three real renderers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import structlog

from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.handlers import StructlogHandler
from omniq_observe.handlers.logs import capture_task_logs
from omniq_observe.models.event import TaskEvent

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def ev(task: str, kind: str, at: float, **details: Any) -> TaskEvent:
    return TaskEvent(
        task_id=task, event_type=kind, timestamp=T0 + timedelta(seconds=at), details=details,
        trace_context={"traceparent": f"00-{TRACE}-{SPAN}-01"},
    )


WORKLOAD = [
    ev("a", "ENQUEUED", 0, queue_name="emails"),
    ev("a", "STARTED", 1, worker_id="w-1"),
    ev("a", "FAILED", 3.5, error="ValueError: bad input", traceback="x" * 500,
       api_key="k-123", note="kept"),
    ev("a", "RETRIED", 4, attempt=2, max_attempts=3),
    ev("a", "STARTED", 5, worker_id="w-2"),
    ev("a", "TIMEOUT", 6.25, timeout_seconds=1),
    ev("b", "ENQUEUED", 0),
    ev("b", "CANCELLED", 1, reason="user"),
]


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


async def run(handler: StructlogHandler, events: list[TaskEvent]) -> None:
    storage = MemoryBackend()
    processor = AsyncEventProcessor(event_storage=storage)
    processor.register_handler(handler)
    await storage.append(events)
    await processor.process_events_once()


async def test_one_line_per_event_with_the_documented_fields() -> None:
    with capture_task_logs() as lines:
        await run(StructlogHandler(max_traceback=40), WORKLOAD)
    assert [(line["event"], line["log_level"]) for line in lines] == [
        ("task.enqueued", "info"),
        ("task.started", "info"),
        ("task.failed", "error"),
        ("task.retried", "warning"),
        ("task.started", "info"),
        ("task.timeout", "error"),
        ("task.enqueued", "info"),
        ("task.cancelled", "warning"),
    ]
    failed = lines[2]
    assert failed["task_id"] == "a"
    assert failed["event_id"] == WORKLOAD[2].event_id
    assert (failed["queue"], failed["worker_id"], failed["attempt"]) == ("emails", "w-1", 1)
    assert failed["duration_s"] == 2.5
    assert (failed["error"], failed["error_type"]) == ("ValueError: bad input", "ValueError")
    assert len(failed["traceback"]) == 40
    assert (failed["trace_id"], failed["span_id"]) == (TRACE, SPAN)
    assert failed["event_timestamp"] == "2024-05-01T12:00:03.500000+00:00"
    assert failed["details"] == {"api_key": "[REDACTED]", "note": "kept"}
    assert (lines[4]["attempt"], lines[5]["attempt"], lines[5]["duration_s"]) == (2, 2, 1.25)
    assert lines[5]["worker_id"] == "w-2"
    assert "duration_s" not in lines[1]
    assert lines[7]["queue"] == "default"
    assert lines[7]["details"] == {"reason": "user"}


async def test_levels_and_redaction_are_configurable() -> None:
    handler = StructlogHandler(levels={"completed": "debug"}, redact=["note"])
    with capture_task_logs() as lines:
        await run(handler, [ev("a", "STARTED", 0, queue_name="q", note="secret", password="p"),
                            ev("a", "COMPLETED", 1)])
    assert [line["log_level"] for line in lines] == ["info", "debug"]
    assert lines[0]["details"] == {"note": "[REDACTED]", "password": "p"}


async def test_nested_secrets_are_redacted_and_long_values_cut() -> None:
    handler = StructlogHandler(max_value_length=8)
    with capture_task_logs() as lines:
        await run(handler, [
            ev("a", "ENQUEUED", 0, queue_name="q", token="t-1", note="0123456789",
               payload={"db_password": "p", "items": [{"api_key": "k", "n": 1}], "ok": "x"}),
            ev("a", "STARTED", 1, note="short", worker_id="w"),  # the key classes are cached
            ev("a", "COMPLETED", 2, worker_id="w"),
        ])
    assert lines[0]["details"] == {
        "token": "[REDACTED]",
        "note": "0123456…",
        "payload": {"db_password": "[REDACTED]", "items": [{"api_key": "[REDACTED]", "n": 1}],
                    "ok": "x"},
    }
    assert lines[1]["details"] == {"note": "short"}
    assert "details" not in lines[2]


async def test_a_duplicate_delivery_is_logged_once() -> None:
    start = ev("a", "STARTED", 0, queue_name="q")
    with capture_task_logs() as lines:
        await run(StructlogHandler(), [start, start])
    assert len(lines) == 1


async def test_json_renderer_writes_one_json_object_per_line() -> None:
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(out),
    )
    await run(StructlogHandler(), WORKLOAD)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == len(WORKLOAD)
    assert lines[2]["event"] == "task.failed"
    assert lines[2]["level"] == "error"
    assert lines[2]["details"]["api_key"] == "[REDACTED]"
    assert "k-123" not in out.getvalue()


async def test_console_renderer_writes_readable_lines() -> None:
    out = io.StringIO()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)
        ],
        logger_factory=structlog.PrintLoggerFactory(out),
    )
    await run(StructlogHandler(), WORKLOAD)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(WORKLOAD)
    assert "task.failed" in lines[2]
    assert "error_type=ValueError" in lines[2]
    assert "k-123" not in out.getvalue()


async def test_stdlib_integration_goes_through_logging() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    std = logging.getLogger("omniq_observe.tasks")
    keep = Keep(level=logging.DEBUG)
    keep.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=structlog.processors.JSONRenderer())
    )
    std.addHandler(keep)
    std.setLevel(logging.DEBUG)
    structlog.configure(
        processors=[structlog.stdlib.add_log_level,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    try:
        await run(StructlogHandler(), WORKLOAD)
    finally:
        std.removeHandler(keep)
        std.setLevel(logging.NOTSET)
    assert [r.levelno for r in records] == [
        logging.INFO, logging.INFO, logging.ERROR, logging.WARNING,
        logging.INFO, logging.ERROR, logging.INFO, logging.WARNING,
    ]
    rendered = json.loads(keep.format(records[2]))
    assert (rendered["event"], rendered["queue"], rendered["error_type"]) == (
        "task.failed", "emails", "ValueError"
    )


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(ConfigurationError) as info:
        StructlogHandler(levels={"FAILED": "loud"})
    assert info.value.setting == "levels"
    with pytest.raises(ConfigurationError) as info:
        StructlogHandler(max_traceback=0)
    assert info.value.setting == "max_traceback"


@pytest.mark.parametrize("bad", [True, float("nan"), 0, -1])
@pytest.mark.parametrize("setting", ["max_traceback", "max_value_length"])
def test_bad_limits_are_refused_with_their_value(setting: str, bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        StructlogHandler(**{setting: bad})
    assert str(info.value) == f"{setting} must be a positive integer, got {bad!r}"
    assert (info.value.setting, info.value.value) == (setting, bad)
