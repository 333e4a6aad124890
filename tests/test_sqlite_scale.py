"""SQLite costs that must not grow with history: chunked prune next to a logger in another
process, and ``query(since=...)`` starting from the time index."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from _sqlite_fill import BASE, fill

from omniq_observe.backend import SQLiteBackend
from omniq_observe.backend.sqlite._sql import first_in_window, query_rows
from omniq_observe.models.event import TaskEvent, epoch_us

HERE = Path(__file__).resolve().parent


def _start_append_timer(path: Path, stop: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "_proc_append_timer.py"), str(path), "1.0", str(stop),
         "live"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


async def test_prune_in_chunks_never_locks_out_a_logger_in_another_process(
    tmp_path: Path,
) -> None:
    path, stop = tmp_path / "prune.db", tmp_path / "stop"
    fill(path, 200_000)
    # busy_timeout 1 s: one 180,000-row DELETE holds the lock about twice that long here.
    proc = _start_append_timer(path, stop)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        async with SQLiteBackend(path) as backend:
            deleted = await backend.prune(older_than=BASE + timedelta(milliseconds=180_000))
        stop.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (0, "")
    report = json.loads(out)
    assert deleted == 180_000
    conn = sqlite3.connect(path)
    try:
        live = conn.execute("SELECT count(*) FROM omniq_events WHERE task_id LIKE 'live-%'")
        assert live.fetchone()[0] == report["stored"]
        left = conn.execute("SELECT count(*) FROM omniq_events WHERE event_id LIKE 'e%'")
        assert left.fetchone()[0] == 20_000
    finally:
        conn.close()


async def test_prune_max_events_in_chunks_keeps_exactly_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "keep.db"
    fill(path, 25_000)
    async with SQLiteBackend(path) as backend:
        assert await backend.prune(max_events=1_234) == 25_000 - 1_234
        kept = await backend.read_after(None, 5_000)
    assert [s.position for s in kept] == list(range(25_000 - 1_234 + 1, 25_001))


def _plan(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> list[str]:
    return [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]


async def test_query_since_starts_from_the_time_index(tmp_path: Path) -> None:
    path = tmp_path / "query.db"
    fill(path, 50_000)
    since = BASE + timedelta(milliseconds=45_000)
    # A late event: logged after the window started, stamped before it.
    async with SQLiteBackend(path) as backend:
        late = TaskEvent(task_id="late", event_type="STARTED", timestamp=BASE)
        early_future = TaskEvent(task_id="skew", event_type="STARTED",
                                 timestamp=since + timedelta(hours=1))
        await backend.append([late, early_future])
        page = await backend.query(since=since, limit=100)
        second = await backend.query(since=since, limit=100, after=page.next_cursor)
        window = await backend.query(since=since, until=since + timedelta(milliseconds=10),
                                     event_types=["started"])
        tail = await backend.query(since=since + timedelta(minutes=30))
    assert [s.position for s in page.events] == list(range(45_001, 45_101))
    assert page.next_cursor == 45_100
    assert [s.position for s in second.events] == list(range(45_101, 45_201))
    # positions 45,001..45,010 hold events 45,000..45,009; STARTED is i % 3 == 1
    assert [s.position for s in window.events] == [45_002, 45_005, 45_008]
    assert window.next_cursor is None
    assert [s.event.event_id for s in tail.events] == [early_future.event_id]
    conn = sqlite3.connect(path)
    try:
        since_us = epoch_us(since)
        # Too far into history for the short scan from the start: the time index answers.
        plan = _plan(conn, "SELECT min(position) FROM omniq_events INDEXED BY omniq_events_ts "
                     "WHERE ts_us >= ? AND ts_us < ?", (since_us, 2**62))
        assert plan == ["SEARCH omniq_events USING COVERING INDEX omniq_events_ts "
                        "(ts_us>? AND ts_us<?)"]
        assert first_in_window(conn, since_us, None) == 45_001
        rows = query_rows(conn, None, (since_us, None), None, 3)
        assert [r[0] for r in rows] == [45_001, 45_002, 45_003]
        # ... and the page itself is a range of positions from there.
        plan = _plan(conn, "SELECT position, body FROM omniq_events WHERE position > ? "
                     "AND ts_us >= ? ORDER BY position LIMIT ?", (45_000, since_us, 3))
        assert plan == ["SEARCH omniq_events USING INTEGER PRIMARY KEY (rowid>?)"]
    finally:
        conn.close()
