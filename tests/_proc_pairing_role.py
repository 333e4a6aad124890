"""Subprocess for tests/test_pairing_processes.py: one role of a scripted workload.

Usage: python _proc_pairing_role.py URL PREFIX ROLE SEED TASKS

Every process builds the same workload (tests/_workloads.py, from SEED) and logs its own
share, in its own event-time order, through its own batching ``AsyncEventLogger``:
``producer`` the ENQUEUED events (and cancellations of queued tasks), ``odd`` the events of
attempts 1 and 3, ``even`` those of attempt 2 (an attempt's RETRIED is its worker's).
URL is a SQLite file path or a Redis URL (PREFIX: the key prefix). Prints ``done``.
"""

from __future__ import annotations

import asyncio
import random
import sys

from _workloads import workload

from omniq_observe.backend import BaseEventStorage, RedisBackend, SQLiteBackend
from omniq_observe.events import AsyncEventLogger
from omniq_observe.models.event import TaskEvent


def share(events: list[TaskEvent], role: str) -> list[TaskEvent]:
    mine, attempt = [], 0
    by_task: dict[str, int] = {}
    for event in events:  # in each task's event-time order
        if event.event_type == "STARTED":
            attempt = by_task[event.task_id] = event.details["attempt"]
        else:
            attempt = by_task.get(event.task_id, 0)
        owner = "producer" if attempt == 0 else ("odd" if attempt % 2 else "even")
        if owner == role:
            mine.append(event)
    return mine


async def main(url: str, prefix: str, role: str, seed: int, tasks: int) -> None:
    events = share(workload(random.Random(seed), tasks), role)
    storage: BaseEventStorage = (
        RedisBackend(url, prefix=prefix) if url.startswith("redis") else SQLiteBackend(url)
    )
    async with storage, AsyncEventLogger(storage, batch=True, flush_interval=0.01) as logger:
        for event in events:
            await logger.log_event(event)
    print("done", flush=True)


if __name__ == "__main__":
    url, prefix, role, seed, tasks = sys.argv[1:6]
    asyncio.run(main(url, prefix, role, int(seed), int(tasks)))
