"""SQLiteBackend specifics: WAL, group commit, the event loop, crash safety, other processes."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _helpers import async_wait_until

from omniq_observe.backend import SQLiteBackend, from_url
from omniq_observe.backend.sqlite import _backend as sqlite_module
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exceptions import ConfigurationError, InvalidURLError, StorageError
from omniq_observe.models.event import TaskEvent

HERE = Path(__file__).resolve().parent


def events(count: int, task: str = "t") -> list[TaskEvent]:
    return [
        TaskEvent(task_id=f"{task}-{i % 5}", event_type="STARTED", details={"seq": i})
        for i in range(count)
    ]


def raw_count(path: Path, where: str = "", args: tuple[object, ...] = ()) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM omniq_events {where}", args).fetchone()[0])
    finally:
        conn.close()


async def test_database_is_in_wal_mode(sqlite_backend: SQLiteBackend) -> None:
    await sqlite_backend.append(events(1))
    conn = sqlite3.connect(sqlite_backend.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    health = await sqlite_backend.health()
    assert (health.ok, health.backend, health.schema_version) == (True, "sqlite", 2)


async def test_append_returns_only_after_commit_visible_to_other_connections(
    sqlite_backend: SQLiteBackend,
) -> None:
    async def one(event: TaskEvent) -> None:
        await sqlite_backend.append([event])
        # another connection (as another process would) sees it as soon as append returned
        assert raw_count(sqlite_backend.path, "WHERE event_id = ?", (event.event_id,)) == 1

    await asyncio.gather(*(one(e) for e in events(64)))
    assert raw_count(sqlite_backend.path) == 64


async def test_concurrent_appends_share_transactions(
    sqlite_backend: SQLiteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sqlite_backend.append(events(1))  # start the threads
    transactions: list[int] = []
    real = sqlite_module._transaction

    def counting(conn: sqlite3.Connection, items: list[sqlite_module._Item]) -> list[object]:
        transactions.append(sum(len(item.rows) for item in items))
        return real(conn, items)

    monkeypatch.setattr(sqlite_module, "_transaction", counting)
    await asyncio.gather(*(sqlite_backend.append([e]) for e in events(64)))
    # 64 callers in one loop turn: at most two queue items (the pipeline splits at 32)
    assert sum(transactions) == 64
    assert len(transactions) <= 2
    assert await sqlite_backend.count() == 65


async def test_event_loop_keeps_running_during_big_writes_and_reads(
    sqlite_backend: SQLiteBackend,
) -> None:
    await sqlite_backend.append(events(1))
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    batch = events(20_000)
    gc.disable()  # a full collection of the test session's heap is not what is measured
    try:
        tick = asyncio.ensure_future(ticker())
        began = time.perf_counter()
        await sqlite_backend.append(batch)
        read = await sqlite_backend.read_after(None, 20_001)
        took = time.perf_counter() - began
        stop.set()
        await tick
    finally:
        gc.enable()
    assert len(read) == 20_001
    # work done on the loop's thread would stall it for about the whole write and read;
    # the loop ticked throughout instead (relative, so a loaded machine does not fail it)
    assert len(gaps) >= 5
    assert max(gaps) < took / 4, (max(gaps), took)


def test_backends_opening_one_new_file_at_once_all_work(tmp_path: Path) -> None:
    # Switching a new file to WAL fails at once with "database is locked" while another
    # connection opens it (SQLite calls no busy handler there): processes that start
    # together on a fresh store used to get a StorageError about 1 round in 10.
    for round_ in range(40):
        path = tmp_path / f"fresh{round_}.db"
        start = threading.Barrier(4)
        failures: list[BaseException] = []

        def write(member: int, path: Path = path, start: threading.Barrier = start,
                  failures: list[BaseException] = failures) -> None:
            backend = SQLiteBackend(path)
            start.wait()
            try:
                backend.append_blocking(events(1, task=f"m{member}"))
            except BaseException as exc:  # collected and asserted below
                failures.append(exc)
            finally:
                backend.close_blocking()

        threads = [threading.Thread(target=write, args=(m,)) for m in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert raw_count(path) == 4


def test_append_blocking_from_sync_code(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "sync.db")
    try:
        backend.append_blocking(events(3))
        assert raw_count(backend.path) == 3
    finally:
        backend.close_blocking()
        backend.close_blocking()


async def test_closed_backend_refuses_work(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "closed.db")
    await backend.append(events(1))
    await backend.close()
    with pytest.raises(StorageError, match="is closed"):
        await backend.append(events(1))
    with pytest.raises(StorageError, match="is closed"):
        await backend.count()
    assert (await backend.health()).ok is False


async def test_unopenable_file_raises_storage_error_with_cause(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path)  # a directory
    with pytest.raises(StorageError) as info:
        await backend.append(events(1))
    assert str(tmp_path) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.Error)
    await backend.close()


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"synchronous": "OFF"}, "synchronous"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": True}, "max_batch"),
        ({"max_batch": -3}, "max_batch"),
        ({"busy_timeout": 0}, "busy_timeout"),
        ({"busy_timeout": float("nan")}, "busy_timeout"),
        ({"busy_timeout": True}, "busy_timeout"),
        ({"lease_seconds": -1.0}, "lease_seconds"),
        ({"lease_seconds": float("inf")}, "lease_seconds"),
        ({"path": ""}, "path"),
    ],
)
def test_bad_settings(tmp_path: Path, kwargs: dict[str, object], setting: str) -> None:
    options: dict[str, object] = {"path": tmp_path / "x.db", **kwargs}
    with pytest.raises(ConfigurationError) as info:
        SQLiteBackend(**options)  # type: ignore[arg-type]
    assert info.value.setting == setting
    assert repr(kwargs[setting]) in str(info.value)


async def test_from_url_sqlite_relative_and_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = from_url("sqlite:///rel.db")
    absolute = from_url(f"sqlite:///{tmp_path}/abs.db?max_batch=10")
    assert isinstance(relative, SQLiteBackend)
    assert isinstance(absolute, SQLiteBackend)
    assert relative.path == Path("rel.db")
    assert absolute.path == tmp_path / "abs.db"
    assert absolute.max_batch == 10
    await relative.append(events(1))
    assert (tmp_path / "rel.db").exists()
    await relative.close()
    await absolute.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:relative.db"])
def test_from_url_sqlite_without_a_file(url: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        from_url(url)
    assert repr(url) in str(info.value)
    assert "sqlite:///relative.db" in str(info.value)


@pytest.mark.parametrize("url", ["mysql://host/db", "file:///tmp/x", "events.db"])
def test_from_url_unknown_scheme_lists_supported(url: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        from_url(url)
    message = str(info.value)
    assert repr(url) in message
    for example in ("memory://", "sqlite:///", "redis://", "postgresql://"):
        assert example in message
    assert info.value.setting == "storage"


def start_logger_process(path: Path, count: int, prefix: str = "task") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "_proc_logger.py"), str(path), str(count), prefix],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_kill_9_after_log_event_returned_loses_nothing(sqlite_path: Path) -> None:
    proc = start_logger_process(sqlite_path, 1_000_000)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    acknowledged = [proc.stdout.readline().strip() for _ in range(500)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # every event whose log_event returned before the kill is in the file
    conn = sqlite3.connect(sqlite_path)
    try:
        stored = {row[0] for row in conn.execute("SELECT event_id FROM omniq_events")}
    finally:
        conn.close()
    assert len(acknowledged) == 500
    assert set(acknowledged) <= stored


async def test_logger_in_one_process_processor_in_another(sqlite_path: Path) -> None:
    proc = start_logger_process(sqlite_path, 300, prefix="remote")
    handled: list[TaskEvent] = []
    try:
        async with SQLiteBackend(sqlite_path) as backend:
            processor = AsyncEventProcessor(event_storage=backend, name="local", batch_size=50)
            processor.register_handler(handled.append)
            runner = asyncio.ensure_future(processor.start())
            await async_wait_until(lambda: len(handled) >= 300, timeout=60, what="300 events")
            await processor.stop()
            await runner
            assert await backend.get_position("local") == await backend.last_position()
    finally:
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    ids = out.split()
    assert ids[-1] == "done"
    assert [e.event_id for e in handled] == ids[1:-1]
    assert [e.details["seq"] for e in handled] == list(range(300))


@pytest.mark.parametrize("bad", [-1, 2.5])
async def test_prune_refuses_a_bad_max_events(sqlite_backend: SQLiteBackend, bad: object) -> None:
    await sqlite_backend.append(events(3))
    with pytest.raises(ConfigurationError) as info:
        await sqlite_backend.prune(max_events=bad)  # type: ignore[arg-type]
    assert info.value.setting == "max_events"
    assert await sqlite_backend.count() == 3


async def test_pages_read_are_untracked_by_the_garbage_collector(
    sqlite_backend: SQLiteBackend,
) -> None:
    """Events and their positions cannot form cycles: a page read must not give the
    collector objects to track (which made big reads trigger and lengthen collections)."""
    events = [TaskEvent(task_id=f"t{i}", event_type="STARTED", details={"i": i}) for i in range(3)]
    await sqlite_backend.append(events)
    page = await sqlite_backend.read_after(None, 10)
    assert [(s.position, s.event) for s in page] == [(1, events[0]), (2, events[1]),
                                                     (3, events[2])]
    assert [gc.is_tracked(s) or gc.is_tracked(s.event) for s in page] == [False] * 3
