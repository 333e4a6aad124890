"""Batching loggers (``batch=True``): background writes, flush/close, overflow, errors, fork."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from _helpers import async_wait_until, wait_until
from opentelemetry.sdk.trace import TracerProvider

from omniq_observe.backend import MemoryBackend, SQLiteBackend
from omniq_observe.events import AsyncEventLogger, EventLogger
from omniq_observe.exceptions import ConfigurationError, StorageError
from omniq_observe.models.event import TaskEvent


def stored(path: Path) -> list[TaskEvent]:
    """Every event in the SQLite file, read through a backend of its own."""

    async def read() -> list[TaskEvent]:
        backend = SQLiteBackend(path)
        try:
            return [s.event for s in await backend.read_after(None, 100_000)]
        finally:
            await backend.close()

    return asyncio.run(read())


def events(count: int, task: str = "t") -> list[TaskEvent]:
    return [TaskEvent(task_id=f"{task}{i}", event_type="ENQUEUED") for i in range(count)]


class GatedBackend(MemoryBackend):
    """Fault injection: ``append`` blocks until the gate opens (a stalled storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    async def append(self, events: Sequence[TaskEvent]) -> None:
        self.entered.set()
        await asyncio.to_thread(self.gate.wait)
        await super().append(events)


def test_sync_batching_returns_before_storage_and_flush_stores_in_order(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    logger = EventLogger(SQLiteBackend(path), batch=True, flush_interval=60.0)
    sent = events(50)
    for event in sent:
        logger.log_event(event)
    assert stored(path) == []  # nothing is due yet: 60 s, 1000 events
    assert logger.flush(timeout=10) is True
    assert stored(path) == sent
    assert logger.stats.logged == 50
    logger.close()


def test_writer_stores_after_flush_interval_without_flush(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLogger(SQLiteBackend(path), batch=True, flush_interval=0.05) as logger:
        logger.log_event(TaskEvent(task_id="a", event_type="STARTED"))
        wait_until(lambda: len(stored(path)) == 1, what="the interval's write")


def test_max_batch_events_are_written_before_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLogger(SQLiteBackend(path), batch=True, flush_interval=600, max_batch=10) as logger:
        logger.log_events(events(10))
        wait_until(lambda: len(stored(path)) == 10, what="a full batch written")


def test_close_stores_everything_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    logger = EventLogger(SQLiteBackend(path), batch=True, flush_interval=600)
    logger.log_events(events(7))
    logger.close()
    logger.close()
    assert len(stored(path)) == 7


def test_overflow_drop_drops_the_newest_and_counts_them() -> None:
    backend = GatedBackend()
    logger = EventLogger(backend, batch=True, flush_interval=0.01, max_queue=5, overflow="drop")
    logger.log_event(TaskEvent(task_id="first", event_type="ENQUEUED"))
    assert backend.entered.wait(10)  # the writer holds "first" and waits on storage
    sent = events(7)
    for event in sent:
        logger.log_event(event)
    assert logger.stats.dropped == 2
    backend.gate.set()
    assert logger.flush(timeout=10) is True
    ids = [s.event.task_id for s in asyncio.run(backend.read_after(None, 100))]
    assert ids == ["first"] + [e.task_id for e in sent[:5]]
    logger.close()


def test_overflow_block_waits_for_room_and_loses_nothing() -> None:
    backend = GatedBackend()
    logger = EventLogger(backend, batch=True, flush_interval=0.01, max_queue=5)
    logger.log_event(TaskEvent(task_id="first", event_type="ENQUEUED"))
    assert backend.entered.wait(10)
    sent = events(8)
    producer = threading.Thread(target=logger.log_events, args=(sent,))
    producer.start()
    wait_until(lambda: logger._batcher is not None and logger._batcher.pending == 6)
    assert producer.is_alive()  # 1 in flight + 5 queued: the 6th waits for room
    backend.gate.set()
    producer.join(10)
    assert not producer.is_alive()
    assert logger.flush(timeout=10) is True
    assert len(asyncio.run(backend.read_after(None, 100))) == 9
    assert logger.stats.dropped == 0
    logger.close()


def test_raise_policy_reaches_the_caller_at_flush(tmp_path: Path) -> None:
    # a real failure: the database's folder does not exist
    logger = EventLogger(SQLiteBackend(tmp_path / "missing" / "e.db"), batch=True)
    logger.log_events(events(3))  # returns: the caller does not wait for storage
    with pytest.raises(StorageError, match="cannot open SQLite database"):
        logger.flush(timeout=10)
    assert logger.stats.dropped == 3
    assert logger.stats.storage_errors >= 1
    assert logger.flush(timeout=10) is True  # the error is raised once
    logger.close()


def test_trace_context_is_taken_in_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    tracer = TracerProvider().get_tracer("t")
    with EventLogger(SQLiteBackend(path), batch=True, flush_interval=600) as logger:
        with tracer.start_as_current_span("producer") as span:
            logger.log_event(TaskEvent(task_id="a", event_type="ENQUEUED"))
        logger.flush(timeout=10)
    [event] = stored(path)
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert event.trace_context["traceparent"].split("-")[1] == trace_id


@pytest.mark.parametrize(
    ("setting", "value"),
    [("flush_interval", 0), ("max_batch", 0), ("max_queue", -1), ("overflow", "spill")],
)
def test_bad_batch_settings_name_the_setting(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=setting) as info:
        AsyncEventLogger(MemoryBackend(), batch=True, **{setting: value})  # type: ignore[arg-type]
    assert info.value.setting == setting
    assert info.value.value == value


@pytest.mark.parametrize("bad", [True, float("nan"), 0, -1])
@pytest.mark.parametrize(("setting", "wanted"), [
    ("flush_interval", "a positive number of seconds"),
    ("max_batch", "a positive integer"),
    ("max_queue", "a positive integer"),
])
def test_bad_batch_numbers_are_refused_with_their_value(
    setting: str, wanted: str, bad: object
) -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncEventLogger(MemoryBackend(), batch=True, **{setting: bad})  # type: ignore[arg-type]
    assert str(info.value) == f"{setting} must be {wanted}, got {bad!r}"
    assert (info.value.setting, info.value.value) == (setting, bad)


async def test_async_batching_flush_and_close(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "e.db")
    logger = AsyncEventLogger(backend, batch=True, flush_interval=60, max_batch=1000)
    sent = events(20)
    for event in sent:
        await logger.log_event(event)
    assert await backend.read_after(None, 100) == []
    assert await logger.flush(timeout=10) is True
    assert [s.event for s in await backend.read_after(None, 100)] == sent
    await logger.log_events(events(3, "late"))
    await logger.aclose()
    assert len(await backend.read_after(None, 100)) == 23
    await backend.close()


async def test_async_batching_writes_on_its_own(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "e.db")
    logger = AsyncEventLogger(backend, batch=True, flush_interval=0.05)
    await logger.log_event(TaskEvent(task_id="a", event_type="STARTED"))

    async def written() -> bool:
        return len(await backend.read_after(None, 10)) == 1

    await async_wait_until(written, what="the interval's write")
    await logger.aclose()
    await backend.close()


async def test_async_overflow_drop_counts() -> None:
    logger = AsyncEventLogger(
        MemoryBackend(), batch=True, flush_interval=60, max_queue=4, overflow="drop"
    )
    await logger.log_events(events(6))  # the writer has not run yet: 4 fit
    assert logger.stats.dropped == 2
    await logger.aclose()
    assert len(await logger.event_storage.read_after(None, 10)) == 4


def _child_logs(logger: EventLogger) -> None:
    logger.log_event(TaskEvent(task_id="child", event_type="STARTED"))
    ok = logger.flush(timeout=10)
    os._exit(0 if ok and logger.stats.logged == 1 else 3)


def test_forked_child_writes_its_own_events_once(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    logger = EventLogger(SQLiteBackend(path), batch=True, flush_interval=600)
    logger.log_events(events(3, "parent"))  # queued, and the writer thread is running
    child = multiprocessing.get_context("fork").Process(target=_child_logs, args=(logger,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert [e.task_id for e in stored(path)] == ["child"]  # the parent's queue stayed home
    logger.close()
    assert sorted(e.task_id for e in stored(path)) == ["child", "parent0", "parent1", "parent2"]


def test_sync_logger_flushes_at_interpreter_exit(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    script = (
        "import sys\n"
        "from omniq_observe.backend import SQLiteBackend\n"
        "from omniq_observe.events import EventLogger\n"
        "from omniq_observe.models.event import TaskEvent\n"
        "logger = EventLogger(SQLiteBackend(sys.argv[1]), batch=True, flush_interval=600)\n"
        "for i in range(25):\n"
        "    logger.log_event(TaskEvent(task_id=f't{i}', event_type='ENQUEUED'))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    assert [e.task_id for e in stored(path)] == [f"t{i}" for i in range(25)]


def test_reopen_storage_keeps_every_setting(tmp_path: Path) -> None:
    from omniq_observe.backend import RedisBackend
    from omniq_observe.events._batch import reopen_storage

    sqlite = SQLiteBackend(tmp_path / "e.db", synchronous="FULL", busy_timeout=2.5, max_batch=7)
    fresh = reopen_storage(sqlite)
    assert fresh is not sqlite and type(fresh) is SQLiteBackend
    assert (fresh.path, fresh.synchronous, fresh.busy_timeout, fresh.max_batch) == (
        sqlite.path, "FULL", 2.5, 7)
    redis = RedisBackend("redis://127.0.0.1:6379/3", prefix="p", claim_idle=9.0, max_batch=11)
    again = reopen_storage(redis)
    assert isinstance(again, RedisBackend) and again is not redis
    assert (again.url, again.prefix, again.claim_idle, again.max_batch) == (
        redis.url, "p", 9.0, 11)
    memory = MemoryBackend()
    assert reopen_storage(memory) is memory  # not ours to rebuild: kept


async def test_async_overflow_block_waits_for_room() -> None:
    backend = GatedBackend()
    logger = AsyncEventLogger(backend, batch=True, flush_interval=0.01, max_queue=3)
    await logger.log_event(TaskEvent(task_id="first", event_type="ENQUEUED"))
    await asyncio.to_thread(backend.entered.wait, 10)  # the writer holds "first"
    producer = asyncio.ensure_future(logger.log_events(events(5)))
    await async_wait_until(lambda: logger._batcher is not None and logger._batcher.pending == 4)
    assert not producer.done()  # 1 in flight + 3 queued: the rest waits for room
    backend.gate.set()
    await asyncio.wait_for(producer, 10)
    assert await logger.flush(timeout=10) is True
    assert len(await backend.read_after(None, 100)) == 6
    assert logger.stats.dropped == 0
    await logger.aclose()
