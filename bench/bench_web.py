"""The web view of ``serve``: how fast its live figures take events, how fast pages answer.

Row (events/s, medians of interleaved repeats):

* ``web view live figures (WebState.add_all)``: the events of ``bench_handlers`` through
  the web view's state: pairing, 5-second buckets for three windows, the failures kept,
  the task-prefix index. Raw baseline: ``stats``' ``Summary.add_all`` over the same
  events (pairing and per-queue figures, no windows).

Latency (``python bench/run.py --large``, or ``python bench/bench_web.py [--events N]``):
a demo SQLite store of about 1,000,000 events written over the last hour (the whole
store falls in the overview's default window), a real ``serve`` subprocess whose processor
is caught up (as after a restart: the web view still reads the whole history), and while a
writer keeps appending new events (so every overview request recomputes), the median and
worst of repeated requests: ``/api/queues`` (the overview's data, 1 h and 24 h windows),
``/`` (the page), ``/api/tasks/<8-char prefix>`` and ``/tasks/<prefix>`` for random tasks.
Targets (issue 13): overview under 300 ms, task page under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Bench
from bench_handlers import T0, make_events

from omniq_observe._summary import Summary
from omniq_observe.backend import MemoryBackend, SQLiteBackend
from omniq_observe.events import EventLogger
from omniq_observe.models.event import TaskEvent
from omniq_observe.web import WebState

OVERVIEW_TARGET_MS = 300.0
TASK_TARGET_MS = 50.0


def _state_run(n: int) -> float:
    events = make_events(n)
    state = WebState(MemoryBackend(), clock=lambda: T0.timestamp() + n * 0.004)
    state.live.pairing.history = None  # the baseline reads no history either
    start = time.perf_counter()
    asyncio.run(state.add_all(events))
    return time.perf_counter() - start


def _summary_run(n: int) -> float:
    events = make_events(n)
    summary = Summary()
    start = time.perf_counter()
    asyncio.run(summary.add_all(events))
    return time.perf_counter() - start


def benchmarks() -> list[Bench]:
    """The web view row."""
    return [
        Bench(
            name="web view live figures (WebState.add_all)",
            events=200_000,
            run=_state_run,
            baseline=_summary_run,
            baseline_name="stats Summary.add_all, same events",
        )
    ]


def _get(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
    return (time.perf_counter() - start) * 1000, body


def _writer(path: Path, stop: threading.Event) -> None:
    """Append a finished task every 20 ms, as live traffic would."""
    logger = EventLogger(event_storage=SQLiteBackend(path))
    n = 0
    while not stop.wait(0.02):
        task = f"live-{n}"
        for kind, details in (("ENQUEUED", {"queue_name": "emails"}),
                              ("STARTED", {"worker_id": "w-live"}), ("COMPLETED", {})):
            logger.log_event(TaskEvent(task_id=task, event_type=kind, details=details))
        n += 1
    logger.close()


def _make_store(path: Path, events: int) -> None:
    tasks = max(1, round(events / 3.0))  # 3.0-3.3 events per task, so at least ``events``
    rate = tasks / 3300.0  # every event inside the last hour
    print(f"writing a demo store of ~{events:,} events ({tasks:,} tasks) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "omniq_observe", "demo", "--storage",
                    f"sqlite:///{path}", "--tasks", str(tasks), "--rate", f"{rate:.3f}",
                    "--queues", "6", "--seed", "1", "--json"],
                   check=True, stdout=subprocess.DEVNULL)


def latency(events: int = 1_000_000, store: Path | None = None, samples: int = 15) -> None:
    """Print the latency table of the web view on a store of ``events`` events."""
    folder = Path(tempfile.mkdtemp(prefix="omniq-bench-web-"))
    path = store or folder / "demo.db"
    if not path.exists():
        _make_store(path, events)
    count = asyncio.run(_caught_up(path, "bench-web"))
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "omniq_observe", "serve", "--storage", f"sqlite:///{path}",
         "--port", str(port), "--name", "bench-web", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    try:
        started = time.perf_counter()
        while True:
            try:
                if json.loads(_get(base + "/api/queues")[1])["loaded"]:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        loaded = time.perf_counter() - started
        writer = threading.Thread(target=_writer, args=(path, stop), daemon=True)
        writer.start()
        rows = [_timed(f"/api/queues?window={w} (overview data)", base, [
            f"/api/queues?window={w}"], samples, 0.6, OVERVIEW_TARGET_MS) for w in ("1h", "24h")]
        rows.append(_timed("/ (overview page)", base, ["/"], samples, 0.0, OVERVIEW_TARGET_MS))
        tasks = asyncio.run(_task_ids(path, samples))
        rows.append(_timed("/api/tasks/<8-char prefix>", base,
                           [f"/api/tasks/{t[:8]}" for t in tasks], samples, 0.0, TASK_TARGET_MS))
        rows.append(_timed("/tasks/<prefix> (task page)", base,
                           [f"/tasks/{t[:8]}" for t in tasks], samples, 0.0, TASK_TARGET_MS))
    finally:
        stop.set()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    print(f"\nweb view on a {count:,}-event SQLite store (history loaded in {loaded:.1f} s, "
          "a writer appending 150 events/s)")
    header = ("request", "median ms", "worst ms", "target ms", "ok")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(" | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


def large_report() -> None:
    """``bench/run.py --large``: the latency table on a 1,000,000-event store."""
    latency()


def _timed(name: str, base: str, paths: list[str], samples: int, pause: float,
           target: float) -> tuple[str, str, str, str, str]:
    times = []
    for i in range(samples):
        times.append(_get(base + paths[i % len(paths)])[0])
        time.sleep(pause)  # lets new events arrive, so the next request recomputes
    median = statistics.median(times)
    return (name, f"{median:.1f}", f"{max(times):.1f}", f"{target:.0f}",
            "yes" if median < target else "NO")


async def _caught_up(path: Path, name: str) -> int:
    """Commit processor ``name`` at the end of the log, as a long-running ``serve`` that
    restarts is; return how many events are stored."""
    async with SQLiteBackend(path) as storage:
        last = await storage.last_position()
        if last is not None:
            await storage.commit_position(name, last)
        return await storage.count()


async def _task_ids(path: Path, n: int) -> list[str]:
    async with SQLiteBackend(path) as storage:
        page = await storage.query(event_types=["ENQUEUED"], limit=50_000)
    rng = random.Random(5)
    return [rng.choice(page.events).event.task_id for _ in range(n)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--store", type=Path, help="reuse this SQLite file (made if missing)")
    args = parser.parse_args()
    latency(args.events, args.store)
