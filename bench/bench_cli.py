"""CLI benchmarks: how fast ``omniq-observe demo`` writes its workload into SQLite.

Rows (events/s, medians of interleaved repeats):

* ``demo -> SQLite (progress bar)``: the demo's own path, ``write_history`` with the rich
  progress bar forced on (a ``Console(force_terminal=True)`` writing to a ``StringIO``):
  making the tasks (random timings, one OpenTelemetry SDK producer span per task for the
  trace context), ordering them by event time, and ``AsyncEventLogger.log_events`` batches.
* ``demo -> SQLite (piped, no bar)``: the same without the bar (stdout not a terminal).

Raw baseline for both: the same events (made before the clock starts) written with
``AsyncEventLogger.log_events`` in the same batch size, no progress bar: what the demo
costs on top of storing its events.

Run: ``python bench/run.py --only demo`` (or ``python bench/bench_cli.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Bench
from rich.console import Console

from omniq_observe.backend import SQLiteBackend
from omniq_observe.cli._workload import Timeline, Workload
from omniq_observe.cli.demo import write_history
from omniq_observe.events import AsyncEventLogger
from omniq_observe.models.event import TaskEvent

BATCH = 2000
EVENTS_PER_TASK = 3.4  # about what the default workload makes (failure rate 0.1)
_tmp = Path(tempfile.mkdtemp(prefix="omniq-bench-cli-"))
atexit.register(shutil.rmtree, _tmp, True)
_count = 0


def _db() -> Path:
    global _count
    _count += 1
    return _tmp / f"demo{_count}.db"


def _tasks(n_events: int) -> int:
    return max(1, round(n_events / EVENTS_PER_TASK))


def demo_run(progress: bool) -> object:
    def run(n: int) -> float:
        async def go() -> float:
            async with SQLiteBackend(_db()) as storage:
                await storage.append([TaskEvent(task_id="warm", event_type="STARTED")])
                logger = AsyncEventLogger(storage)
                console = Console(force_terminal=progress, file=io.StringIO(), width=100)
                start = time.perf_counter()
                tally = await write_history(logger, Workload(seed=1), _tasks(n), rate=100.0,
                                            console=console, show_progress=progress)
                elapsed = time.perf_counter() - start
            # The harness divides n by the time: scale it to the events really written.
            return elapsed * n / tally.events

        return asyncio.run(go())

    return run


def _same_events(tasks: int) -> list[TaskEvent]:
    workload = Workload(seed=1)
    timeline = Timeline()
    now = time.time()
    for index in range(tasks):
        timeline.push(*workload.task(now - 200 + index / 100.0))
    return [event for _, event in timeline.pop_until(float("inf"))]


def logger_baseline(n: int) -> float:
    events = _same_events(_tasks(n))

    async def go() -> float:
        async with SQLiteBackend(_db()) as storage:
            await storage.append([TaskEvent(task_id="warm", event_type="STARTED")])
            logger = AsyncEventLogger(storage)
            start = time.perf_counter()
            for first in range(0, len(events), BATCH):
                await logger.log_events(events[first : first + BATCH])
            elapsed = time.perf_counter() - start
        return elapsed * n / len(events)

    return asyncio.run(go())


def benchmarks() -> list[Bench]:
    """The CLI rows."""
    return [
        Bench(
            name="demo -> SQLite (progress bar)",
            events=50_000,
            run=demo_run(progress=True),  # type: ignore[arg-type]
            baseline=logger_baseline,
            baseline_name="AsyncEventLogger.log_events, same events, no bar",
        ),
        Bench(
            name="demo -> SQLite (piped, no bar)",
            events=50_000,
            run=demo_run(progress=False),  # type: ignore[arg-type]
            baseline=logger_baseline,
            baseline_name="AsyncEventLogger.log_events, same events, no bar",
        ),
    ]


if __name__ == "__main__":
    from _harness import run_bench

    for bench in benchmarks():
        result = run_bench(bench)
        ratio = "-" if result.ratio is None else f"{result.ratio:.2f}"
        base = "-" if result.baseline_rate is None else f"{result.baseline_rate:,.0f}"
        print(f"{bench.name}: {result.rate:,.0f}/s  baseline {base}/s  ratio {ratio}")
