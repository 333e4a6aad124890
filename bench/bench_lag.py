"""Growth rows: processor lag is truthful during a catch-up (issue 16, item 4).

A SQLite file holds N events two hours old (100k and 1M with ``--large``); a processor
(``batch_size=1000``, a Prometheus handler) catches up on them. Before each batch is
handled, ``stats.lag_seconds()`` and ``/healthz``'s check are sampled.

* **lag while behind, min s**: the smallest lag sampled after the first batch. Target: it
  shows the backlog, about 7,200 s, at every sample (>= 7,100).
* **healthz unhealthy while behind, share**: the share of those samples where the health
  check (``max_lag`` 60 s) said unhealthy. Target: 1.0.
* **lag once caught up, s**: after the catch-up. Target: 0.
* **catch-up rate, events/s**: for context.

Run: ``python bench/run.py --large --only lag``.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Bench, Growth
from prometheus_client import CollectorRegistry

from omniq_observe.backend import SQLiteBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exporter import ProcessorHealth
from omniq_observe.handlers import PrometheusHandler
from omniq_observe.models.event import TaskEvent

TWO_HOURS = timedelta(hours=2)
BATCH = 1000


async def _catch_up(path: Path, n: int) -> tuple[float, float, float, float]:
    """(min lag while behind, unhealthy share, lag after, events/s) for ``n`` old events."""
    storage = SQLiteBackend(path)
    old = datetime.now(timezone.utc) - TWO_HOURS
    step = timedelta(microseconds=1)
    for start in range(0, n, 10_000):
        await storage.append([
            TaskEvent(task_id=f"t{i}", event_type="STARTED", timestamp=old + i * step,
                      details={"queue_name": "q"})
            for i in range(start, min(n, start + 10_000))
        ])
    processor = AsyncEventProcessor(storage, name="catchup", batch_size=BATCH)
    processor.register_handler(PrometheusHandler(registry=CollectorRegistry()))
    health = ProcessorHealth(processor.stats, max_lag=60)
    processor.stats.running = True  # the health check asks for a running loop
    lags: list[float] = []
    unhealthy = 0
    seen = 0

    def sample(event: TaskEvent) -> None:  # once per batch: at its first event
        nonlocal unhealthy, seen
        seen += 1
        if seen % BATCH == 1 and processor.stats.last_event_timestamp is not None:
            lags.append(processor.stats.lag_seconds())
            unhealthy += not health()[0]

    processor.register_handler(sample, name="sample")
    began = time.perf_counter()
    handled = await processor.process_events_once()
    rate = handled / (time.perf_counter() - began)
    assert handled == n and processor.stats.caught_up
    after = processor.stats.lag_seconds()
    await storage.close()
    return min(lags), unhealthy / len(lags), after, rate


def growth(sizes: list[int]) -> list[Growth]:
    """Measure the catch-up rows at each size in ``sizes``."""
    behind = Growth("processor lag while catching up (events 2 h old)", "min s",
                    target=">= 7,100 at every sample")
    share = Growth("  /healthz check unhealthy while behind", "share", target="1.0")
    after = Growth("  lag once caught up", "s", target="0")
    rate = Growth("  catch-up rate (SQLite, batch 1000, Prometheus handler)", "events/s")
    for n in sizes:
        folder = Path(tempfile.mkdtemp(prefix="omniq-lag-"))
        try:
            values = asyncio.run(_catch_up(folder / "events.db", n))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        behind.values[n], share.values[n], after.values[n], rate.values[n] = values
    behind.ok = min(behind.values.values()) >= 7100
    share.ok = min(share.values.values()) == 1.0
    after.ok = max(after.values.values()) == 0.0
    return [behind, share, after, rate]


def benchmarks() -> list[Bench]:
    """This module has growth rows only."""
    return []


if __name__ == "__main__":
    for row in growth([100_000, 1_000_000]):
        print(row)
