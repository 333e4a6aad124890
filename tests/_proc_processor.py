"""Subprocess for the processor tests: process a SQLite file's events, recording each.

Usage: python _proc_processor.py DB_PATH OUT_PATH NAME BATCH_SIZE MODE [DELAY]

Each handled event's ``event_id`` is appended to OUT_PATH (one line, written to the OS
before the handler returns). MODE ``once``: ``process_events_once`` then print ``done N``;
MODE ``run``: ``start()`` until killed. DELAY: seconds of work per event (default 0), so
that a parent can kill the process while it is mid-stream.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from omniq_observe.backend import SQLiteBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.models.event import TaskEvent


async def main(
    path: str, out_path: str, name: str, batch_size: int, mode: str, delay: float
) -> None:
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(event: TaskEvent) -> None:
        if delay:
            time.sleep(delay)  # a slow handler: the work the parent interrupts
        os.write(fd, (event.event_id + "\n").encode())

    async with SQLiteBackend(path) as storage:
        processor = AsyncEventProcessor(event_storage=storage, name=name, batch_size=batch_size)
        processor.register_handler(record)
        print("ready", flush=True)
        if mode == "once":
            handled = await processor.process_events_once()
            print(f"done {handled}", flush=True)
        else:
            await processor.start()
    os.close(fd)


if __name__ == "__main__":
    delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], delay))
