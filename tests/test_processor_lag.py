"""Processor lag is truthful (#16 item 4): a catch-up of old events shows as lag in
``lag_seconds()``, ``omniq_observe_processor_lag_seconds`` and ``/healthz``, and reads 0
once the processor has read everything."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _helpers import async_wait_until
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from omniq_observe.backend import SQLiteBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.events.processor import ProcessorStats
from omniq_observe.exporter import ProcessorHealth, start_http_server
from omniq_observe.handlers import PrometheusHandler
from omniq_observe.models.event import TaskEvent

TWO_HOURS = 7200.0
MILLISECOND = timedelta(milliseconds=1)


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def lag_gauge(text: str, processor: str) -> float:
    [value] = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "omniq_observe_processor_lag_seconds" and s.labels["processor"] == processor
    ]
    return value


def test_stats_do_not_start_caught_up() -> None:
    stats = ProcessorStats()
    assert stats.caught_up is False
    assert stats.lag_seconds() == 0.0  # nothing handled yet: no event time to measure from
    stats.last_event_timestamp = 1000.0
    assert stats.lag_seconds(now=1060.5) == 60.5


async def test_a_backlog_of_old_events_shows_as_lag_until_caught_up(tmp_path: Path) -> None:
    storage = SQLiteBackend(tmp_path / "events.db")
    old = datetime.now(timezone.utc) - timedelta(seconds=TWO_HOURS)
    await storage.append(
        [
            TaskEvent(task_id=f"t{i}", event_type="STARTED", timestamp=old + i * MILLISECOND)
            for i in range(5000)
        ]
    )
    registry = CollectorRegistry()
    processor = AsyncEventProcessor(storage, name="catchup", batch_size=100, idle_timeout=0.05)
    processor.register_handler(PrometheusHandler(registry=registry))
    gate = asyncio.Event()
    seen: list[float] = []

    async def slow(event: TaskEvent) -> None:
        if int(event.task_id[1:]) % 100 == 0:  # once per batch: how far behind are we?
            seen.append(processor.stats.lag_seconds())
        if event.task_id == "t2550":
            await gate.wait()  # a slow handler, held in the middle of the backlog

    processor.register_handler(slow)
    server = start_http_server(0, registry=registry, health=ProcessorHealth(processor.stats))
    task = asyncio.create_task(processor.start())
    try:
        await async_wait_until(lambda: processor.stats.processed == 2500, what="25 batches")
        lag = processor.stats.lag_seconds()
        assert TWO_HOURS - 10 < lag < TWO_HOURS + 60, lag
        status, body = await asyncio.to_thread(fetch, f"{server.url}/metrics")
        assert status == 200
        assert TWO_HOURS - 10 < lag_gauge(body, "catchup") < TWO_HOURS + 60
        status, body = await asyncio.to_thread(fetch, f"{server.url}/healthz")
        assert status == 503
        reason = json.loads(body)["reason"]
        assert re.fullmatch(r"processor lag 7(19\d|2[0-5]\d)\.\ds is over 60\.0s", reason), reason
        gate.set()
        await async_wait_until(lambda: processor.stats.caught_up, what="caught up")
        assert processor.stats.processed == 5000
        assert processor.stats.lag_seconds() == 0.0
        status, body = await asyncio.to_thread(fetch, f"{server.url}/metrics")
        assert lag_gauge(body, "catchup") == 0.0
        health = await asyncio.to_thread(fetch, f"{server.url}/healthz")
        assert health == (200, '{"status": "ok"}\n')
    finally:
        gate.set()
        await processor.stop()
        await task
        server.close()
        await storage.close()
    # every batch after the first saw the backlog: about two hours, never 0
    assert len(seen) == 50
    assert seen[0] == 0.0  # before the first batch was handled, no event time was known
    assert all(TWO_HOURS - 10 < lag < TWO_HOURS + 60 for lag in seen[1:]), seen
    assert time.time() - processor.stats.last_event_timestamp > TWO_HOURS - 10  # type: ignore[operator]
