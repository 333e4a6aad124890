"""Subprocess for the SQLite prune tests: append one event at a time until told to stop.

Usage: python _proc_append_timer.py DB_PATH BUSY_TIMEOUT STOP_FILE TASK_PREFIX

Prints ``ready`` after the first event is stored. Each ``log_event`` waits for its commit
(``on_storage_error="raise"``, so any StorageError ends the process with exit code 1).
Once STOP_FILE exists it prints one JSON line: events stored, and the longest, the 99th
percentile and the median ``log_event`` in seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from omniq_observe.backend import SQLiteBackend
from omniq_observe.events import AsyncEventLogger
from omniq_observe.models.event import TaskEvent


def _stopped(stop_file: str) -> bool:
    return os.path.exists(stop_file)


async def main(path: str, busy_timeout: float, stop_file: str, prefix: str) -> None:
    async with SQLiteBackend(path, busy_timeout=busy_timeout) as storage:
        logger = AsyncEventLogger(event_storage=storage)
        count, took = 0, []
        while not _stopped(stop_file):
            event = TaskEvent(task_id=f"{prefix}-{count // 3}", event_type="STARTED",
                              details={"seq": count})
            started = time.perf_counter()
            await logger.log_event(event)
            took.append(time.perf_counter() - started)
            count += 1
            if count == 1:
                print("ready", flush=True)
    took.sort()
    report = {
        "stored": count,
        "max_append_seconds": took[-1],
        "p99_append_seconds": took[int(0.99 * (len(took) - 1))],
        "p50_append_seconds": took[(len(took) - 1) // 2],
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]))
