"""What every integration shares: details, redaction, cut tracebacks, and never raising."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from celery import Celery

from omniq_observe.backend import MemoryBackend, SQLiteBackend
from omniq_observe.events import AsyncEventLogger, EventLogger
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.integrations._common import TaskRecorder, iso_time, sync_logger_for
from omniq_observe.integrations.celery import instrument


def test_failure_details_are_redacted_and_cut() -> None:
    recorder = TaskRecorder(EventLogger(MemoryBackend()), max_traceback=200)
    try:
        raise ValueError("login failed: password=hunter2, api_key: 'abc123' " + "x" * 500)
    except ValueError as exc:
        details = recorder.failure(exc)
    assert details["error_type"] == "ValueError"
    assert "hunter2" not in details["error"] and "abc123" not in details["error"]
    assert "password=[REDACTED]" in details["error"]
    assert "api_key: [REDACTED] x" in details["error"]
    assert len(details["traceback"]) == 200
    assert details["traceback"].startswith("…")
    assert details["traceback"].endswith("x" * 20 + "\n")


def test_events_carry_worker_id_and_leave_out_none() -> None:
    recorder = TaskRecorder(EventLogger(MemoryBackend()))
    event = recorder.event("t1", "STARTED", {"task_name": "send", "eta": None})
    host, pid = event.details["worker_id"].rsplit(":", 1)
    assert host and int(pid) > 0
    assert event.details == {"task_name": "send", "worker_id": event.details["worker_id"]}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-02T03:04:05+01:00", "2026-01-02T02:04:05+00:00"),
        ("2026-01-02T03:04:05", "2026-01-02T03:04:05+00:00"),
        (0, "1970-01-01T00:00:00+00:00"),
        (None, None),
        ("soon", None),
    ],
)
def test_iso_time(value: object, expected: str | None) -> None:
    assert iso_time(value) == expected


def test_a_failing_storage_never_raises_and_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = EventLogger(SQLiteBackend(tmp_path / "missing" / "e.db"))  # cannot be opened
    recorder = TaskRecorder(logger)
    with caplog.at_level(logging.WARNING, "omniq_observe.integrations"):
        recorder.log("t1", "STARTED")
        recorder.flush(1)
    assert recorder.errors == 1
    assert "could not log STARTED for task t1" in caplog.text
    logger.close()


async def test_async_failing_storage_never_raises(tmp_path: Path) -> None:
    recorder = TaskRecorder(AsyncEventLogger(SQLiteBackend(tmp_path / "missing" / "e.db")))
    await recorder.alog("t1", "STARTED")
    assert recorder.errors == 1


def test_a_celery_task_runs_when_storage_fails(tmp_path: Path) -> None:
    app = Celery("omniq_eager", broker="memory://")
    app.conf.task_always_eager = True  # the worker-side signals run in this process
    instrumentation = instrument(app, EventLogger(SQLiteBackend(tmp_path / "no" / "e.db")))
    try:

        @app.task(name="eager.add")
        def add(x: int, y: int) -> int:
            return x + y

        assert add.delay(2, 3).get() == 5
        assert instrumentation.recorder.errors == 2  # STARTED and COMPLETED, not stored
    finally:
        instrumentation.disconnect()


def test_a_bad_logger_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="logger must be an event logger") as info:
        sync_logger_for(42)  # type: ignore[arg-type]
    assert info.value.setting == "logger"
    assert info.value.value == 42


def test_a_storage_url_gets_a_batching_logger(tmp_path: Path) -> None:
    logger = sync_logger_for(f"sqlite:///{tmp_path / 'e.db'}")
    assert logger._batcher is not None
    logger.close()
