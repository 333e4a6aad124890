"""A processor killed while the reorder window holds pairs, then restarted: the numbers a
user sees (the killed process's last scrape plus the restarted process's numbers; its
counters start again at zero) equal the reference of the whole workload.

With SIGKILL on real subprocesses over SQLite, Redis and PostgreSQL, and in-process at
random points (the processor left as a crash leaves it: its batches acknowledged, what the
window holds never decided). The events are stamped an hour ahead of the wall clock, so
that only event time decides what waits (a processor that has caught up also decides by
the wall clock)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _helpers import wait_until
from _server_backends import make_postgres, make_redis
from _workloads import T0, pairing_samples, reference, workload
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from omniq_observe.backend import BaseEventStorage, MemoryBackend, SQLiteBackend
from omniq_observe.cli.check import inspect_storage
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers import PrometheusHandler
from omniq_observe.models.event import TaskEvent

HERE = Path(__file__).resolve().parent


def _ahead(events: list[TaskEvent], rng: random.Random) -> list[TaskEvent]:
    """``events`` moved to an hour from now, in an arrival order where each event comes
    up to 5 s late (within the default 10 s reorder window)."""
    shift = datetime.now(timezone.utc) + timedelta(hours=1) - T0
    moved = []
    for event in events:
        details = dict(event.details)
        if "eta" in details:
            details["eta"] = (datetime.fromisoformat(details["eta"]) + shift).isoformat()
        moved.append(msgspec.structs.replace(event, timestamp=event.timestamp + shift,
                                             details=details))
    late = [(e.timestamp.timestamp() + rng.uniform(0, 5), i, e) for i, e in enumerate(moved)]
    return [e for _at, _i, e in sorted(late)]


class _Scrape:
    """A text exposition, read like a registry."""

    def __init__(self, text: str) -> None:
        self.text = text

    def collect(self) -> Iterable[Any]:
        return text_string_to_metric_families(self.text)


# -- in-process: the state a crash leaves ------------------------------------------------
async def _crashed_and_restarted(storage: BaseEventStorage, arrivals: list[TaskEvent],
                                 cut: int) -> tuple[CollectorRegistry, CollectorRegistry]:
    await storage.append(arrivals[:cut])
    first = CollectorRegistry()
    crashed = AsyncEventProcessor(storage, "pairs", batch_size=7)
    crashed.register_handler(PrometheusHandler(registry=first))
    await crashed._run_batches(None)  # handled and acknowledged; then it "dies"
    await storage.append(arrivals[cut:])
    second = CollectorRegistry()
    again = AsyncEventProcessor(storage, "pairs", batch_size=7)
    again.register_handler(PrometheusHandler(registry=second))
    await again.process_events_once()
    return first, second


@pytest.mark.parametrize("seed", range(int(os.environ.get("PF_SEEDS", "8"))))
def test_a_crash_at_any_point_keeps_the_numbers(seed: int) -> None:
    rng = random.Random(seed)
    arrivals = _ahead(workload(rng, 40, spread_ms=60_000), rng)
    cut = rng.randrange(1, len(arrivals))
    first, second = asyncio.run(_crashed_and_restarted(MemoryBackend(), arrivals, cut))
    assert pairing_samples(first, second, gauges=False) == reference(arrivals)


async def test_a_crash_with_nothing_waiting_replays_nothing(tmp_path: Path) -> None:
    async with SQLiteBackend(str(tmp_path / "events.db")) as storage:
        events = workload(random.Random(3), 20)  # 2024: the wall clock decides them all
        await storage.append(events)
        registry = CollectorRegistry()
        processor = AsyncEventProcessor(storage, "pairs", batch_size=7)
        processor.register_handler(PrometheusHandler(registry=registry))
        await processor._run_batches(None)
        positions = await storage.positions()
        assert positions["pairs~clock"] == 0
        assert pairing_samples(registry) == reference(events)
        report = await inspect_storage(storage, "events.db")
        assert [p["name"] for p in report["processors"]] == ["pairs"]  # no "~" positions


# -- SIGKILL ---------------------------------------------------------------------------
def _crash_and_restart(storage: BaseEventStorage, url: str, prefix: str) -> dict[Any, float]:
    rng = random.Random(31)
    arrivals = _ahead(workload(rng, 120, spread_ms=60_000), rng)
    cut = len(arrivals) * 3 // 5
    run: Callable[[Any], Any] = asyncio.get_event_loop().run_until_complete
    run(storage.append(arrivals[:cut]))
    script = [sys.executable, str(HERE / "_proc_pairing_crash.py"), url, prefix]
    proc = subprocess.Popen([*script, "serve"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=HERE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        last = run(storage.last_position())

        def holding() -> dict[str, Any] | None:
            positions = run(storage.positions())
            caught_up = positions.get("crash") == last
            return positions if caught_up and int(positions.get("crash~clock", 0)) > 0 else None

        positions = wait_until(holding, timeout=60, what="the processor holding pairs")
        assert positions["crash~held"] != last  # a batch before the last waits
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            scrape = reply.read().decode()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    run(storage.append(arrivals[cut:]))
    restarted = subprocess.run([*script, "once"], capture_output=True, text=True, cwd=HERE,
                               timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    got = pairing_samples(_Scrape(scrape), _Scrape(restarted.stdout), gauges=False)
    assert pairing_samples(_Scrape(scrape), gauges=False) != reference(arrivals[:cut])
    return {"got": got, "want": reference(arrivals)}


def _check(storage: BaseEventStorage, url: str, prefix: str) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        result = _crash_and_restart(storage, url, prefix)
        loop.run_until_complete(storage.close())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert result["got"] == result["want"]


def test_sigkill_while_pairs_wait_sqlite(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    _check(SQLiteBackend(path), path, "")


def test_sigkill_while_pairs_wait_redis(tmp_path: Path) -> None:
    storage = make_redis(tmp_path)
    _check(storage, storage.url, storage.prefix)


def test_sigkill_while_pairs_wait_postgres(tmp_path: Path) -> None:
    storage = make_postgres(tmp_path)
    _check(storage, storage.dsn, storage.schema)
