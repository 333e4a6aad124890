"""Helpers of the processor-group tests (SQLite, Redis, PostgreSQL): member processes,
workloads with retries, a single processor's samples, and the checks their sums must pass."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from _helpers import POSTGRES_URL, REDIS_URL, async_wait_until, wait_until
from prometheus_client import CollectorRegistry

from omniq_observe.backend import BaseEventStorage, Position
from omniq_observe.backend.postgres import PostgresBackend
from omniq_observe.backend.redis import RedisBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers import PrometheusHandler
from omniq_observe.models.event import TaskEvent

WORKER = Path(__file__).with_name("_worker_proc.py")


def storage_url(backend: BaseEventStorage, **params: object) -> str:
    """A storage URL that reaches the same data as ``backend``, for another process."""
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    if isinstance(backend, RedisBackend):
        base = f"{REDIS_URL}?prefix={backend.prefix}&claim_idle={backend.claim_idle}"
    else:
        assert isinstance(backend, PostgresBackend)
        base = f"{POSTGRES_URL}?schema={backend.schema}&lease_seconds={backend.lease_seconds}"
    return f"{base}&{extra}" if extra else base


def queued(n: int, prefix: str = "t") -> list[TaskEvent]:
    return [TaskEvent(task_id=f"{prefix}{i}", event_type="ENQUEUED",
                      details={"queue_name": "q", "i": i}) for i in range(n)]


class Workers:
    """Processor subprocesses of one group, each writing its results under ``tmp``."""

    def __init__(self, tmp: Path, url: str, group: str) -> None:
        self.tmp, self.url, self.group = tmp, url, group
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def out(self, member: str) -> Path:
        return self.tmp / f"{member}.json"

    def start(self, member: str, *extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), self.url, self.group, member, str(self.out(member)),
             *extra],
            cwd=WORKER.parent,
            stderr=subprocess.PIPE,
        )
        self.procs[member] = proc
        return proc

    def wait_ready(self, *members: str) -> None:
        for member in members or tuple(self.procs):
            proc = self.procs[member]
            wait_until(lambda m=member, p=proc: Path(f"{self.out(m)}.ready").exists()
                       or p.poll() is not None, timeout=30, what=f"worker {member} ready")
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""

    def handled_log(self, member: str) -> list[str]:
        path = Path(f"{self.out(member)}.log")
        return path.read_text().split() if path.exists() else []

    def stop(self) -> dict[str, dict[str, Any]]:
        results = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for member, proc in self.procs.items():
            _, err = proc.communicate(timeout=60)
            if proc.returncode == -signal.SIGKILL:
                continue
            assert proc.returncode == 0, err.decode()
            results[member] = json.loads(self.out(member).read_text())
        return results

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def caught_up_with(storage: BaseEventStorage, group: str) -> bool:
    last = await storage.last_position()
    return last is not None and await storage.get_position(group) == last


def retry_workload(tasks: int) -> list[TaskEvent]:
    """Tasks that overlap; every 3rd fails once and is retried, every 5th ends FAILED."""
    steps: list[tuple[int, int, TaskEvent]] = []
    for i in range(tasks):
        task, at = f"t{i}", 4 * i

        def add(offset: int, order: int, kind: str, details: dict[str, Any],
                task: str = task, at: int = at) -> None:
            steps.append((at + offset, order, TaskEvent(task_id=task, event_type=kind,
                                                        details=details)))

        add(0, 0, "ENQUEUED", {"queue_name": f"q{i % 3}"})
        add(40, 1, "STARTED", {"worker_id": "w"})
        if i % 3 == 0:
            add(60, 2, "FAILED", {"error": "boom", "error_type": "ValueError"})
            add(61, 3, "RETRIED", {"attempt": 2})
            add(80, 4, "STARTED", {"worker_id": "w"})
        if i % 5 == 0:
            add(100, 5, "FAILED", {"error": "late", "error_type": "KeyError"})
        else:
            add(100, 5, "COMPLETED", {})
    steps.sort(key=lambda step: (step[0], step[1]))
    return [event for _, _, event in steps]


async def single_samples(storage: BaseEventStorage, events_total: int) -> dict[str, float]:
    """The samples of one processor (its own group) over ``storage``."""
    registry = CollectorRegistry()
    processor = AsyncEventProcessor(storage, "single", batch_size=500)
    processor.register_handler(PrometheusHandler(registry=registry, prefix="omniq"))
    assert await processor.process_events_once() == events_total
    found: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def task_numbers(samples: dict[str, float]) -> dict[str, float]:
    """The task metrics per label set (not the processor's own, nor creation times)."""
    return {k: v for k, v in samples.items()
            if k.startswith("omniq_task") and "{" in k and "_created" not in k}


def check_group_results(
    results: dict[str, dict[str, Any]], events: list[TaskEvent], single: dict[str, float]
) -> None:
    """Four members handled each event once, every task's events in one member, and their
    Prometheus numbers add up to ``single``'s (a single processor's samples)."""
    single = task_numbers(single)
    handled = [eid for r in results.values() for eid in r["handled"]]
    assert len(handled) == len(events)  # none handled twice ...
    assert set(handled) == {e.event_id for e in events}  # ... and every one handled
    by_id = {e.event_id: e for e in events}
    members_of: defaultdict[str, set[str]] = defaultdict(set)
    for member, result in results.items():
        for eid in result["handled"]:
            members_of[by_id[eid].task_id].add(member)
        assert result["stats"]["storage_errors"] == 0
    assert {len(m) for m in members_of.values()} == {1}  # each task in one process
    assert len({m for ms in members_of.values() for m in ms}) == 4  # all four worked
    # The members' numbers, summed, are a single processor's: counters, histograms, gauges.
    summed: Counter[str] = Counter()
    for result in results.values():
        summed.update(task_numbers(result["prometheus"]))
    assert single["omniq_task_duration_seconds_count{queue=q0,status=completed}"] > 0
    summed_nonzero = {k: v for k, v in summed.items() if v or k in single}
    assert summed_nonzero.keys() == single.keys()
    for key, value in single.items():  # counts exactly; float sums up to their rounding
        assert summed_nonzero[key] == (pytest.approx(value, rel=1e-9) if "_sum{" in key
                                       else value), key


async def run_four_members(
    storage: BaseEventStorage, workers: Workers, events: list[TaskEvent],
    spread: Callable[[], Any],
) -> tuple[dict[str, dict[str, Any]], list[Position]]:
    """Start four members of group ``scale``; once ``spread()`` says they divided the
    partitions (so that every task's events go to one member from its first event on),
    append ``events``; stop them once they caught up. Returns their results and the
    group's positions seen meanwhile."""
    positions: list[Position] = []
    for n in range(4):
        workers.start(f"p{n}", "--batch-size", "500")
    workers.wait_ready()
    await async_wait_until(spread, timeout=30, interval=0.05,
                           what="four members holding four partitions each")
    for i in range(0, len(events), 5000):
        await storage.append(events[i : i + 5000])

    async def caught_up() -> bool:
        position = await storage.get_position("scale")
        if position is not None:
            positions.append(position)
        return await caught_up_with(storage, "scale")

    await async_wait_until(caught_up, timeout=120, interval=0.05, what="the group caught up")
    return workers.stop(), positions


def recording_member(
    storage: BaseEventStorage, member: str
) -> tuple[AsyncEventProcessor, list[str]]:
    """A processor of group ``g`` that records the task id of each event it handles."""
    processor = AsyncEventProcessor(storage, "g", member=member, idle_timeout=0.05)
    seen: list[str] = []
    processor.register_handler(lambda e: seen.append(e.task_id))
    return processor, seen


async def redis_holders(storage: RedisBackend, group: str) -> Counter[str]:
    """How many partitions each member of ``group`` holds a lease on."""
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        leases = await admin.hgetall(f"{storage.prefix}:leases:{group}")
    finally:
        await admin.aclose()
    return Counter(value.decode().split(" ", 1)[1] for value in leases.values())
