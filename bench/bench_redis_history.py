"""Redis cost as history grows: the first ``query`` page, a half ``prune`` and memory.

For each size (100k and 1M events by default) a private ``redis-server`` (no persistence,
on a free port, so that ``INFO memory`` counts only this run) is filled with typical events
(3 per task, 10 ms apart, so a 10 s window always holds the same 1,000 events), then:

* ``first page since``: ``query(since=<the middle event's time>, limit=100)``;
* ``first page window``: ``query(since=middle, until=middle + 60 s, limit=100)``;
* ``half prune``: ``prune(older_than=<the middle event's time>)``;
* ``memory after``: ``used_memory`` after the prune as a share of before.

Targets (issue 17, item 3): the first page and the half prune at 1M within 10x of those at
100k; memory after pruning half at most 55 % of before. Medians of 5 runs for the queries.

Run: ``python bench/run.py --large`` (or this file, ``--sizes 100000,1000000``). Not part
of the default ``bench/run.py`` run: filling 1M events takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis.asyncio as aioredis

from omniq_observe.backend.redis import RedisBackend
from omniq_observe.models.event import TaskEvent

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEP = timedelta(milliseconds=10)
SIZES = (100_000, 1_000_000)


def benchmarks() -> list[Any]:
    """No rows in the default run (see :func:`large_report`)."""
    return []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events(start: int, count: int) -> list[TaskEvent]:
    types = ("ENQUEUED", "STARTED", "COMPLETED")
    return [TaskEvent(task_id=f"task-{i // 3}", event_type=types[i % 3], timestamp=T0 + i * STEP,
                      details={"queue_name": "emails", "worker_id": "w-1", "attempt": 1})
            for i in range(start, start + count)]


async def _median(fn: Any, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def _measure(url: str, size: int) -> dict[str, float]:
    storage = RedisBackend(url, prefix="bench")
    admin = aioredis.Redis.from_url(url)
    try:
        start = time.perf_counter()
        for i in range(0, size, 10_000):
            await storage.append(_events(i, min(10_000, size - i)))
        fill = time.perf_counter() - start
        middle = T0 + (size // 2) * STEP
        since = await _median(lambda: storage.query(since=middle, limit=100))
        window = await _median(lambda: storage.query(since=middle,
                                                     until=middle + timedelta(seconds=60),
                                                     limit=100))
        before = (await admin.info("memory"))["used_memory"]
        start = time.perf_counter()
        deleted = await storage.prune(older_than=middle)
        prune = time.perf_counter() - start
        after = (await admin.info("memory"))["used_memory"]
        assert deleted == size // 2, deleted
        assert await storage.count() == size - size // 2
        return {"fill_rate": size / fill, "since_ms": since * 1000, "window_ms": window * 1000,
                "prune_s": prune, "memory_before_mb": before / 2**20,
                "memory_share": after / before}
    finally:
        await admin.aclose()
        await storage.close()


def measure(size: int) -> dict[str, float]:
    """Fill a private redis-server with ``size`` events and measure it."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", tmp],
                                stdout=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)  # redis-server starting: poll the port
            return asyncio.run(_measure(url, size))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def large_report(sizes: tuple[int, ...] = SIZES) -> None:
    """Print the table for ``sizes`` (the first is the reference for the growth ratios)."""
    results = {size: measure(size) for size in sizes}
    ref = results[sizes[0]]
    print("redis history | fill ev/s | first page since | first page window | half prune | "
          "growth (page / prune) | memory before | after prune")
    for size, r in results.items():
        print(f"{size:>13,} | {r['fill_rate']:>9,.0f} | {r['since_ms']:>13.2f} ms | "
              f"{r['window_ms']:>14.2f} ms | {r['prune_s']:>8.2f} s | "
              f"{r['since_ms'] / ref['since_ms']:>5.1f}x / {r['prune_s'] / ref['prune_s']:>4.1f}x"
              f" | {r['memory_before_mb']:>9.1f} MB | {r['memory_share']:>6.1%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    large_report(tuple(int(s) for s in parser.parse_args().sizes.split(",")))
