"""Fill a SQLite events file fast for the scale tests and benchmarks: one INSERT ... SELECT
over a recursive CTE, rows of ``task-N`` (three events each), one millisecond apart."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from omniq_observe.backend import SQLiteBackend
from omniq_observe.models.event import TaskEvent, encode_event, epoch_us

#: The timestamp of the first filled event; event i is ``i`` milliseconds later.
BASE = datetime(2026, 1, 1, tzinfo=timezone.utc)


def fill(path: Path, count: int, start: int = 0) -> None:
    """Append ``count`` events (numbered from ``start``) to the file at ``path``."""
    backend = SQLiteBackend(path)  # creates (or migrates) the schema
    backend.write_blocking(lambda conn: None)
    backend.close_blocking()
    body = encode_event(TaskEvent(task_id="filled", event_type="STARTED", timestamp=BASE,
                                  details={"queue_name": "emails", "worker_id": "w-1"}))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO omniq_events (event_id, task_id, event_type, ts_us, body) "
            "SELECT 'e' || i, 'task-' || (i / 3), "
            "CASE i % 3 WHEN 0 THEN 'ENQUEUED' WHEN 1 THEN 'STARTED' ELSE 'COMPLETED' END, "
            "? + i * 1000, ? FROM n",
            (start, start + count - 1, epoch_us(BASE), body),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
