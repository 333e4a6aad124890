"""Foundation benchmarks: logging events to memory and SQLite, the sync logger, the processor.

Each row's raw baseline is what a user would hand-write with the same libraries, measured
in the same run:

* memory ``log_event``: a plain ``list.append`` of the same events;
* SQLite ``log_event``: ``sqlite3`` ``executemany`` of the same rows (same table schema, same
  row contents the backend writes: event_id, task_id, event_type, ts_us, JSON body) in
  transactions of 64 rows, with the backend's pragmas (WAL, synchronous=NORMAL). The
  baseline's rows are encoded before the clock starts; the backend encodes in its timed part;
* sync ``EventLogger``: the async logger at concurrency 1 (a sync caller is sequential),
  and at concurrency 64;
* ``process_events_once``: ``sqlite3`` ``SELECT`` of the same rows in pages of 1000, each
  body decoded with ``msgspec`` and handed to the same no-op handler.

Run: ``python bench/run.py --only foundation`` (or ``python bench/bench_foundation.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec
from _harness import Bench

from omniq_observe.backend import BaseEventStorage, MemoryBackend, SQLiteBackend
from omniq_observe.backend.sqlite._sql import SCHEMA as _SCHEMA
from omniq_observe.events import AsyncEventLogger, AsyncEventProcessor, EventLogger
from omniq_observe.models.event import TaskEvent, encode_event, epoch_us

BATCH = 64


def make_events(n: int) -> list[TaskEvent]:
    """``n`` typical events: lifecycle types of n/3 tasks, with small details."""
    types = ("ENQUEUED", "STARTED", "COMPLETED")
    return [
        TaskEvent(
            task_id=f"task-{i // 3}",
            event_type=types[i % 3],
            details={"queue_name": "emails", "worker_id": "w-1", "attempt": 1},
        )
        for i in range(n)
    ]


class _TempDir:
    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="omniq-bench-"))
        self.count = 0

    def new_db(self) -> Path:
        self.count += 1
        return self.path / f"b{self.count}.db"

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


_tmp = _TempDir()
atexit.register(_tmp.cleanup)


async def _log_concurrently(
    storage: BaseEventStorage, events: list[TaskEvent], workers: int
) -> float:
    logger = AsyncEventLogger(event_storage=storage)
    await storage.append([TaskEvent(task_id="warm", event_type="STARTED")])  # open the file
    chunks = [events[i::workers] for i in range(workers)]

    async def worker(chunk: list[TaskEvent]) -> None:
        log_event = logger.log_event
        for event in chunk:
            await log_event(event)

    start = time.perf_counter()
    await asyncio.gather(*(worker(chunk) for chunk in chunks))
    elapsed = time.perf_counter() - start
    await storage.close()
    return elapsed


def log_event_run(
    make_storage: Callable[[], BaseEventStorage], workers: int
) -> Callable[[int], float]:
    def run(n: int) -> float:
        events = make_events(n)
        return asyncio.run(_log_concurrently(make_storage(), events, workers))

    return run


def list_append_baseline(n: int) -> float:
    events = make_events(n)
    stored: list[TaskEvent] = []
    append = stored.append
    start = time.perf_counter()
    for event in events:
        append(event)
    return time.perf_counter() - start


def sqlite_rows(events: list[TaskEvent]) -> list[tuple[str, str, str, int, str]]:
    return [
        (e.event_id, e.task_id, e.event_type, epoch_us(e.timestamp), encode_event(e).decode())
        for e in events
    ]


def executemany_baseline(n: int) -> float:
    rows = sqlite_rows(make_events(n))
    conn = sqlite3.connect(_tmp.new_db(), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    sql = (
        "INSERT INTO omniq_events (event_id, task_id, event_type, ts_us, body) "
        "VALUES (?, ?, ?, ?, ?)"
    )
    start = time.perf_counter()
    for i in range(0, n, BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[i : i + BATCH])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def sync_logger_run(n: int) -> float:
    events = make_events(n)
    storage = SQLiteBackend(_tmp.new_db())
    with EventLogger(event_storage=storage) as logger:
        logger.log_event(TaskEvent(task_id="warm", event_type="STARTED"))
        start = time.perf_counter()
        for event in events:
            logger.log_event(event)
        elapsed = time.perf_counter() - start
    storage.close_blocking()
    return elapsed


def _filled_sqlite(n: int) -> Path:
    path = _tmp.new_db()

    async def fill() -> None:
        async with SQLiteBackend(path) as storage:
            events = make_events(n)
            for i in range(0, n, 5000):
                await storage.append(events[i : i + 5000])

    asyncio.run(fill())
    return path


def _noop(event: TaskEvent) -> None:
    return None


def processor_run(n: int) -> float:
    path = _filled_sqlite(n)

    async def process() -> float:
        async with SQLiteBackend(path) as storage:
            processor = AsyncEventProcessor(event_storage=storage, name="bench")
            processor.register_handler(_noop)
            await storage.count()  # open the file
            start = time.perf_counter()
            handled = await processor.process_events_once()
            elapsed = time.perf_counter() - start
            assert handled == n, (handled, n)
            return elapsed

    return asyncio.run(process())


def processor_baseline(n: int) -> float:
    path = _filled_sqlite(n)
    decode = msgspec.json.Decoder(TaskEvent).decode
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    sql = "SELECT position, body FROM omniq_events WHERE position > ? ORDER BY position LIMIT 1000"
    start = time.perf_counter()
    after, handled = -1, 0
    while True:
        rows = conn.execute(sql, (after,)).fetchall()
        if not rows:
            break
        for _position, body in rows:
            _noop(decode(body))
        handled += len(rows)
        after = rows[-1][0]
    elapsed = time.perf_counter() - start
    conn.close()
    assert handled == n, (handled, n)
    return elapsed


def benchmarks() -> list[Bench]:
    """The rows of the foundation table."""
    memory = MemoryBackend

    def sqlite() -> SQLiteBackend:
        return SQLiteBackend(_tmp.new_db())

    return [
        Bench("foundation: memory log_event c1", 50_000, log_event_run(memory, 1),
              list_append_baseline, "list.append"),
        Bench("foundation: memory log_event c64", 50_000, log_event_run(memory, 64),
              list_append_baseline, "list.append"),
        Bench("foundation: sqlite log_event c1", 20_000, log_event_run(sqlite, 1),
              executemany_baseline, "sqlite3 executemany, 64-row txns"),
        Bench("foundation: sqlite log_event c64", 50_000, log_event_run(sqlite, 64),
              executemany_baseline, "sqlite3 executemany, 64-row txns", target_rate=50_000),
        Bench("foundation: sync EventLogger sqlite vs async c1", 20_000, sync_logger_run,
              log_event_run(sqlite, 1), "AsyncEventLogger sqlite c1", target_ratio=0.5),
        Bench("foundation: sync EventLogger sqlite vs async c64", 20_000, sync_logger_run,
              log_event_run(sqlite, 64), "AsyncEventLogger sqlite c64"),
        Bench("foundation: sqlite process_events_once no-op", 100_000, processor_run,
              processor_baseline, "sqlite3 SELECT pages + msgspec decode", target_rate=200_000),
    ]


if __name__ == "__main__":
    from _harness import run_bench

    try:
        for bench in benchmarks():
            result = run_bench(bench)
            ratio = "-" if result.ratio is None else f"{result.ratio:.2f}"
            base = "-" if result.baseline_rate is None else f"{result.baseline_rate:,.0f}"
            print(f"{bench.name}: {result.rate:,.0f}/s  baseline {base}/s  ratio {ratio}")
    finally:
        _tmp.cleanup()
