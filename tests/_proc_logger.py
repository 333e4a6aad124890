"""Subprocess for the SQLite tests: log events to a SQLite file, print each id once stored.

Usage: python _proc_logger.py DB_PATH COUNT [TASK_PREFIX]

Prints ``ready`` first, then one ``event_id`` line (flushed) after each ``log_event``
returned, then ``done``. The parent may kill it at any moment.
"""

from __future__ import annotations

import asyncio
import sys

from omniq_observe.backend import SQLiteBackend
from omniq_observe.events import AsyncEventLogger
from omniq_observe.models.event import TaskEvent


async def main(path: str, count: int, prefix: str) -> None:
    async with SQLiteBackend(path) as storage:
        logger = AsyncEventLogger(event_storage=storage)
        print("ready", flush=True)
        for index in range(count):
            event = TaskEvent(
                task_id=f"{prefix}-{index // 3}",
                event_type=("ENQUEUED", "STARTED", "COMPLETED")[index % 3],
                details={"seq": index},
            )
            await logger.log_event(event)
            sys.stdout.write(event.event_id + "\n")
            sys.stdout.flush()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "task"))
