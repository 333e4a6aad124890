"""Redis cost as history grows: the first ``query`` page, a half ``prune`` and memory.

For each size (100k and 1M events by default) a private ``redis-server`` (no persistence,
on a free port, so that ``INFO memory`` counts only this run) is filled with typical events
(3 per task, 10 ms apart, so a 10 s window always holds the same 1,000 events), then:

* ``first page since``: ``query(since=<the middle event's time>, limit=100)``;
* ``first page window``: ``query(since=middle, until=middle + 60 s, limit=100)``;
* ``half prune``: ``prune(older_than=<the middle event's time>)``, wall time and CPU time
  (the Redis server's and this process's; steadier than wall time on a busy machine);
* ``memory after``: ``used_memory`` after the prune as a share of before.

Targets (issue 17, item 3): the first page and the half prune at 1M within 10x of those at
100k; memory after pruning half at most 55 % of before. Medians of 5 runs for the queries.

Run: ``python bench/run.py --large --only redis`` (rows of the growth table; or this file,
``--sizes 100000,1000000``). Not part of the default run: filling 1M events takes about two
minutes. Sizes above 1M (``--scale``) are skipped here.
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
from _harness import Growth

from omniq_observe.backend.redis import RedisBackend
from omniq_observe.models.event import TaskEvent

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEP = timedelta(milliseconds=10)
SIZES = (100_000, 1_000_000)


def benchmarks() -> list[Any]:
    """No rows in the default run (see :func:`growth`, run by ``--large``)."""
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


async def _cpu(admin: Any) -> float:
    """CPU seconds the Redis server has used (user + system)."""
    info = await admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


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
        cpu = await _cpu(admin) + time.process_time()
        start = time.perf_counter()
        deleted = await storage.prune(older_than=middle)
        prune = time.perf_counter() - start
        cpu = await _cpu(admin) + time.process_time() - cpu
        after = (await admin.info("memory"))["used_memory"]
        assert deleted == size // 2, deleted
        assert await storage.count() == size - size // 2
        return {"fill_rate": size / fill, "since_ms": since * 1000, "window_ms": window * 1000,
                "prune_s": prune, "prune_cpu_s": cpu, "memory_before_mb": before / 2**20,
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


def growth(sizes: list[int]) -> list[Growth]:
    """The Redis growth rows at each size up to 1M in ``sizes``."""
    since = Growth("Redis query(since) first page of 100", "ms", target="1M <= 10x 100k")
    window = Growth("Redis query(since, until 60 s later) first page", "ms")
    prune = Growth("Redis prune half: duration", "s", target="1M <= 10x 100k")
    cpu = Growth("Redis prune half: CPU (server + client)", "s", target="1M <= 10x 100k")
    before = Growth("Redis used_memory before the prune", "MB")
    share = Growth("Redis used_memory after pruning half", "% of before", target="<= 55 %")
    rows = [since, window, prune, cpu, before, share]
    for n in (n for n in sizes if n <= 1_000_000):
        r = measure(n)
        since.values[n], window.values[n] = r["since_ms"], r["window_ms"]
        prune.values[n], cpu.values[n] = r["prune_s"], r["prune_cpu_s"]
        before.values[n], share.values[n] = r["memory_before_mb"], 100 * r["memory_share"]
    for row in (since, prune, cpu):
        values = [row.values[n] for n in sorted(row.values)]
        row.ok = values[-1] <= 10 * values[0] if len(values) > 1 else None
    share.ok = max(share.values.values()) <= 55 if share.values else None
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    for row in growth([int(s) for s in parser.parse_args().sizes.split(",")]):
        values = [v for _, v in sorted(row.values.items())]
        ratio = f", {values[-1] / values[0]:.1f}x" if len(values) > 1 and values[0] else ""
        print(f"{row.name}: " + ", ".join(f"{n:,}: {v:,.3f} {row.unit}"
                                          for n, v in sorted(row.values.items())) + ratio
              + (f"  (target {row.target}: {'met' if row.ok else 'NOT met'})"
                 if row.ok is not None else ""))
