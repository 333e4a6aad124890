"""The retry buffer keeps only transient failures (#16 item 6): one event storage refuses
never blocks the events after it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from omniq_observe.backend import SQLiteBackend
from omniq_observe.events import AsyncEventLogger, EventLogger
from omniq_observe.exceptions import BackendUnavailableError, InvalidEventError, StorageError
from omniq_observe.models.event import TaskEvent


class _Count(int):
    """An int subclass: the encoder cannot write it, so TaskEvent stores its plain value."""


def lock_database(path: Path) -> sqlite3.Connection:
    """Hold SQLite's write lock from another connection, as a busy process would."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


Rig = tuple[SQLiteBackend, AsyncEventLogger]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A SQLite backend and a logger on it with the buffer policy."""
    backend = SQLiteBackend(tmp_path / "events.db")
    logger = AsyncEventLogger(event_storage=backend, on_storage_error="buffer")
    yield backend, logger
    await logger.aclose()
    await backend.close()


def valid(count: int) -> list[TaskEvent]:
    return [TaskEvent(task_id=f"t{i}", event_type="STARTED") for i in range(count)]


def spoiled() -> TaskEvent:
    """An event changed after it was made into something the wire form cannot carry."""
    event = TaskEvent(task_id="bad", event_type="FAILED", details={"error": "x"})
    event.details["tags"] = object()  # validation ran before this
    return event


async def test_int_subclass_event_then_150_valid_ones_are_all_stored(rig: Rig) -> None:
    backend, logger = rig
    first = TaskEvent(task_id="first", event_type="STARTED", details={"attempt": _Count(2)})
    assert type(first.details["attempt"]) is int
    await logger.log_event(first)
    for event in valid(150):
        await logger.log_event(event)
    assert logger.buffered == 0
    assert await backend.count() == 151
    assert logger.stats.logged == 151
    assert (await backend.read_after(None, 1))[0].event.details == {"attempt": 2}


async def test_a_refused_event_raises_at_once_and_the_150_after_it_are_stored(rig: Rig) -> None:
    backend, logger = rig
    with pytest.raises(InvalidEventError) as info:
        await logger.log_event(spoiled())
    assert info.value.field == "details['tags']"
    assert "details['tags'] is a object" in str(info.value)
    assert logger.buffered == 0
    for event in valid(150):
        await logger.log_event(event)
    assert logger.buffered == 0
    assert await backend.count() == 150
    assert (logger.stats.logged, logger.stats.buffered, logger.stats.dropped) == (150, 0, 0)


def test_sync_logger_raises_a_refused_event_at_once_too(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "events.db")
    with EventLogger(backend, on_storage_error="buffer") as logger:
        with pytest.raises(InvalidEventError):
            logger.log_event(spoiled())
        logger.log_events(valid(150))
        assert logger.flush(timeout=5) is True
        assert logger.stats.logged == 150
    backend.close_blocking()


async def test_a_refused_event_already_in_the_buffer_is_dropped_not_retried(
    tmp_path: Path,
) -> None:
    backend = SQLiteBackend(tmp_path / "events.db", busy_timeout=0.05)
    logger = AsyncEventLogger(event_storage=backend, on_storage_error="buffer",
                              retry_interval=0.01)
    await logger.log_event(TaskEvent(task_id="first", event_type="STARTED"))
    lock = lock_database(backend.path)
    try:
        await logger.log_event(TaskEvent(task_id="before", event_type="STARTED"))
        assert logger.buffered == 1  # storage is locked: a transient failure
        await logger.log_event(spoiled())  # queued behind it, as order demands
        for event in valid(150):
            await logger.log_event(event)
        assert logger.buffered == 152
    finally:
        lock.close()
    with structlog.testing.capture_logs() as logs:
        assert await logger.flush(timeout=10) is True
    assert [log for log in logs if log["log_level"] == "error"] == [
        {"event": "omniq.refused_events_dropped", "dropped": 1, "log_level": "error"},
    ]
    assert await backend.count() == 152
    assert logger.stats.dropped == 1
    assert logger.stats.logged == 152
    stored = [s.event.task_id for s in await backend.read_after(None, 1000)]
    assert stored == ["first", "before"] + [f"t{i}" for i in range(150)]
    await logger.aclose()
    await backend.close()


async def test_a_locked_database_is_transient_and_buffered(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "events.db", busy_timeout=0.05)
    await backend.append(valid(1))
    lock = lock_database(backend.path)
    try:
        with pytest.raises(BackendUnavailableError) as info:
            await backend.append(valid(1))
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        lock.close()
    await backend.close()


async def test_a_storage_error_that_is_not_transient_is_raised_not_buffered(rig: Rig) -> None:
    backend, logger = rig
    await logger.log_event(TaskEvent(task_id="t", event_type="A"))
    with sqlite3.connect(backend.path) as conn:  # the table goes behind the backend's back
        conn.execute("ALTER TABLE omniq_events RENAME TO moved_away")
    with pytest.raises(StorageError) as info:
        await logger.log_event(TaskEvent(task_id="t", event_type="B"))
    assert not isinstance(info.value, BackendUnavailableError)
    assert "no such table" in str(info.value)
    assert logger.buffered == 0
    assert logger.stats.storage_errors == 1


async def test_the_valid_events_of_a_batch_with_a_refused_one_are_stored(rig: Rig) -> None:
    backend, logger = rig
    before, after = valid(3), valid(2)
    with pytest.raises(InvalidEventError) as info:
        await logger.log_events([*before, spoiled(), *after])
    assert info.value.field == "details['tags']"
    assert [s.event for s in await backend.read_after(None, 10)] == before + after
    assert (logger.stats.logged, logger.buffered) == (5, 0)
