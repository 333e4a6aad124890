"""Settings every bench worker app reads from the environment (set by bench_integrations)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from omniq_observe.models.event import TaskEvent

BROKER_DB = 15
BROKER = f"redis://127.0.0.1:6379/{BROKER_DB}"
QUEUE = os.environ.get("OMNIQ_BENCH_QUEUE", "omniq-bench")
OBSERVE = os.environ.get("OMNIQ_BENCH_OBSERVE") == "1"
STORAGE = os.environ.get("OMNIQ_BENCH_STORAGE", "memory://")
COUNTER = f"{QUEUE}:done"
counter = redis.Redis.from_url(BROKER)


def count() -> None:
    """What every no-op task does: count itself done."""
    counter.incr(COUNTER)


def warm(logger: Any) -> None:
    """Open the producer's storage before the clock starts (one event, stored)."""
    if logger is not None:
        logger.log_event(TaskEvent(task_id="bench-warm-up", event_type="CUSTOM"))
        logger.flush(30)


def produce(
    enqueue: Callable[[int], None], flush: Callable[[], Any] = lambda: None
) -> None:
    """``python wb_x.py N``: enqueue N no-op tasks, wait until done, print the seconds."""
    n = int(sys.argv[1])
    counter.delete(COUNTER)
    start = time.perf_counter()
    enqueue(n)
    deadline = start + 300
    while int(counter.get(COUNTER) or 0) < n:
        if time.perf_counter() > deadline:
            raise SystemExit(f"only {counter.get(COUNTER)} of {n} tasks done")
        time.sleep(0.002)
    print(time.perf_counter() - start)
    flush()
