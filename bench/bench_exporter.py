"""Exporter benchmark: what 1 Hz scrapes of a large ``/metrics`` cost the processor.

A processor with ``PrometheusHandler`` (memory backend, 100 queues, 5 error types per
queue, so about 13,000 exposition lines) works through a backlog; its exporter is scraped
once a second over HTTP by another process, with Prometheus's own ``Accept`` header
(OpenMetrics) and gzip. Baseline: the same backlog with nobody scraping, interleaved in the same
run. Target (issue 17, item 11): ratio 0.9 or better.

Run: ``python bench/run.py --only exporter`` (or ``python bench/bench_exporter.py``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Bench
from prometheus_client import CollectorRegistry

from omniq_observe.backend import MemoryBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exporter import start_http_server
from omniq_observe.handlers import PrometheusHandler
from omniq_observe.models.event import TaskEvent

QUEUES = 100
ERROR_TYPES = 5
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def make_events(n: int, offset: int = 0) -> list[TaskEvent]:
    """About ``n`` events: tasks spread over every queue; one in five fails."""
    events: list[TaskEvent] = []
    i = 0
    while len(events) < n:
        task = f"t{offset + i}"
        at = T0 + timedelta(seconds=(offset + i) / 1000)
        queue = f"queue-{i % QUEUES}"
        end = ("FAILED", {"error_type": f"Error{i % ERROR_TYPES}"}) if i % 5 == 0 else (
            "COMPLETED", {})
        events += [
            TaskEvent(task_id=task, event_type="ENQUEUED", timestamp=at,
                      details={"queue_name": queue}),
            TaskEvent(task_id=task, event_type="STARTED", timestamp=at + timedelta(seconds=1)),
            TaskEvent(task_id=task, event_type=end[0], timestamp=at + timedelta(seconds=2),
                      details=end[1]),
        ]
        i += 1
    return events


_SCRAPER = """
import sys, time, urllib.request
url, accept = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, headers={"Accept": accept, "Accept-Encoding": "gzip"})
while True:
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as response:
        print(len(response.read()), flush=True)
    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
"""


def _start_scraper(url: str) -> subprocess.Popen[str]:
    """Scrape ``url`` once a second from another process, as Prometheus would."""
    return subprocess.Popen(
        [sys.executable, "-c", _SCRAPER, url, PROMETHEUS_ACCEPT], stdout=subprocess.PIPE,
        text=True,
    )


def _process(n: int, scrape: bool) -> float:
    async def go() -> float:
        storage = MemoryBackend()
        registry = CollectorRegistry()
        processor = AsyncEventProcessor(event_storage=storage, name="bench")
        processor.register_handler(PrometheusHandler(registry=registry))
        await storage.append(make_events(QUEUES * ERROR_TYPES * 3, offset=10**9))
        await processor.process_events_once()  # every series exists before the clock runs
        await storage.append(make_events(n))
        server = start_http_server(0, registry=registry)
        scraper = None
        try:
            if scrape:
                scraper = _start_scraper(f"{server.url}/metrics")
                assert scraper.stdout is not None
                scraper.stdout.readline()  # the first scrape is in: the clock starts
            start = time.perf_counter()
            while await processor.process_events_once():
                pass
            elapsed = time.perf_counter() - start
        finally:
            if scraper is not None:
                scraper.kill()
                scraper.wait()
            server.close()
        return elapsed

    return asyncio.run(go())


def scraped_run(n: int) -> float:
    return _process(n, scrape=True)


def quiet_run(n: int) -> float:
    return _process(n, scrape=False)


def benchmarks() -> list[Bench]:
    """The rows of the exporter table."""
    return [
        Bench("exporter: processor with 1 Hz scrapes, 100 queues", 300_000, scraped_run,
              quiet_run, "same processor, no scrapes", target_ratio=0.9, repeats=5),
    ]


if __name__ == "__main__":
    from _harness import run_bench

    for bench in benchmarks():
        result = run_bench(bench)
        print(f"{bench.name}: {result.rate:,.1f}/s baseline "
              f"{result.baseline_rate or 0:,.1f}/s ratio {result.ratio or 0:.2f} "
              f"(runs {[round(r) for r in result.rates]} vs "
              f"{[round(r) for r in result.baseline_rates]})")
