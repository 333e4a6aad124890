"""The SQLite WAL stays bounded under sustained appends; a logger's buffer drains when
only part of its backlog fits on disk."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from _helpers import async_wait_until

from omniq_observe.backend import SQLiteBackend
from omniq_observe.backend.sqlite import _writer
from omniq_observe.events import AsyncEventLogger
from omniq_observe.exceptions import BackendUnavailableError
from omniq_observe.models.event import TaskEvent


def _events(start: int, count: int, pad: int = 100) -> list[TaskEvent]:
    return [
        TaskEvent(task_id=f"task-{i // 3}", event_type="STARTED", details={"i": i, "p": "x" * pad})
        for i in range(start, start + count)
    ]


class _WalWatch:
    """Samples the size of ``path``'s WAL every millisecond on a thread of its own."""

    def __init__(self, path: Path) -> None:
        self.wal = f"{path}-wal"
        self.largest = 0
        self.shrunk = 0
        self._last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        try:
            size = os.stat(self.wal).st_size
        except OSError:
            return
        self.largest = max(self.largest, size)
        if size < self._last:
            self.shrunk += 1
        self._last = size

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.sample()

    def __enter__(self) -> _WalWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def test_wal_stays_bounded_while_appends_and_reads_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound scaled down (1 MiB instead of 32 MiB) so that a test-sized load crosses it
    # many times; without the size-driven TRUNCATE this load grows the WAL to ~14 MB.
    monkeypatch.setattr(_writer, "TRUNCATE_AT", 1024 * 1024)
    monkeypatch.setattr(_writer, "PASSIVE_EVERY", 256 * 1024)
    path = tmp_path / "wal.db"
    writer, reader = SQLiteBackend(path, max_batch=500), SQLiteBackend(path)
    read = 0
    done = asyncio.Event()

    async def read_all() -> None:  # a processor-like reader holding snapshots meanwhile
        nonlocal read
        position = None
        while not done.is_set() or read < 30_000:
            page = await reader.read_after(position, 1000)
            if page:
                position, read = page[-1].position, read + len(page)
            else:
                await asyncio.sleep(0.005)

    try:
        with _WalWatch(path) as watch:
            reading = asyncio.ensure_future(read_all())
            for start in range(0, 30_000, 500):
                await writer.append(_events(start, 500))
                watch.sample()
            done.set()
            await asyncio.wait_for(reading, 30)
        assert read == 30_000
        assert await writer.count() == 30_000
        assert watch.shrunk >= 3  # truncated again and again, not once at the end
        # 1 MiB, plus one transaction of 500 events written before the next turn.
        assert watch.largest < 2 * 1024 * 1024, watch.largest
    finally:
        await writer.close()
        await reader.close()


class _SmallDisk(SQLiteBackend):
    """A real SQLite limit stands in for a nearly full disk: ``max_page_count``."""

    def set_page_limit(self, pages: int) -> None:
        self.write_blocking(lambda conn: conn.execute(f"PRAGMA max_page_count={pages}"))

    def page_count(self) -> int:
        return int(self.write_blocking(lambda c: c.execute("PRAGMA page_count").fetchone()[0]))


async def test_buffer_drains_in_smaller_batches_when_only_part_fits(tmp_path: Path) -> None:
    path = tmp_path / "full.db"
    backend = _SmallDisk(path)
    await backend.append(_events(0, 1))
    used = backend.page_count()
    backend.set_page_limit(used)  # full: not one page more
    logger = AsyncEventLogger(backend, on_storage_error="buffer", buffer_size=5000)
    backlog = _events(1, 1000, pad=2000)  # one 4 KiB page each: about 4 MB
    try:
        with pytest.raises(BackendUnavailableError, match="disk is full"):
            await backend.append(backlog[:10])
        for event in backlog:
            await logger.log_event(event)
        first = logger.stats.logged  # what still fit into the last page's free space
        assert first <= 2
        assert logger.buffered == 1000 - first
        # Free 3 MiB: room for roughly three quarters of the backlog, not all of it.
        backend.set_page_limit(used + 768)
        await async_wait_until(lambda: logger.stats.logged >= 600, timeout=30,
                               what="the buffer to drain what fits")
        stored = [s.event for s in await backend.read_after(None, 2000)][1:]
        assert stored == backlog[: len(stored)]  # in order, nothing skipped or doubled
        assert 600 <= len(stored) < 1000
        assert logger.stats.logged == len(stored)
        assert logger.buffered == 1000 - len(stored)
        # Once there is room for the rest, it drains completely.
        backend.set_page_limit(1_000_000)
        assert await logger.flush(timeout=30)
        assert [s.event for s in await backend.read_after(None, 2000)][1:] == backlog
    finally:
        await logger.aclose(timeout=1)
        await backend.close()
