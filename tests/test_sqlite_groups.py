"""SQLite processor groups: task-routed partitions leased in the database file.

* four processes of one group on one file handle each event exactly once, every task's
  events in one process, and their Prometheus numbers add up to a single processor's;
* a SIGKILLed member's partitions are taken over once its lease expired;
* the group's position never moves backwards; a stopped member hands over at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _helpers import async_wait_until, wait_until
from prometheus_client import CollectorRegistry
from test_distributed import _caught_up, _events, _Workers

from omniq_observe.backend import BaseEventStorage, Position, SQLiteBackend
from omniq_observe.backend._partitions import PARTITIONS, partition_of
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers import PrometheusHandler
from omniq_observe.models.event import TaskEvent


def _url(path: Path, lease: float) -> str:
    return f"sqlite:///{path}?lease_seconds={lease}"


def _retry_workload(tasks: int) -> list[TaskEvent]:
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


def _spread(path: Path, group: str) -> bool:
    """Whether four members each hold four partitions of ``group``."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT member, count(*) FROM omniq_parts WHERE grp = ? GROUP BY member", (group,)
        ).fetchall()
    finally:
        conn.close()
    return sorted(count for member, count in rows if member is not None) == [4, 4, 4, 4] \
        and all(member is not None for member, _ in rows)


async def _single(path: Path, events_total: int) -> dict[str, float]:
    """The samples of one processor (its own group) over the same file."""
    async with SQLiteBackend(path) as storage:
        return await single_samples(storage, events_total)


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


def _task_numbers(samples: dict[str, float]) -> dict[str, float]:
    """The task metrics per label set (not the processor's own, nor creation times)."""
    return {k: v for k, v in samples.items()
            if k.startswith("omniq_task") and "{" in k and "_created" not in k}


def check_group_results(
    results: dict[str, dict[str, Any]], events: list[TaskEvent], single: dict[str, float]
) -> None:
    """Four members handled each event once, every task's events in one member, and their
    Prometheus numbers add up to ``single``'s (a single processor's samples)."""
    single = _task_numbers(single)
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
        summed.update(_task_numbers(result["prometheus"]))
    assert single["omniq_task_duration_seconds_count{queue=q0,status=completed}"] > 0
    summed_nonzero = {k: v for k, v in summed.items() if v or k in single}
    assert summed_nonzero.keys() == single.keys()
    for key, value in single.items():  # counts exactly; float sums up to their rounding
        assert summed_nonzero[key] == (pytest.approx(value, rel=1e-9) if "_sum{" in key
                                       else value), key


async def run_four_members(
    storage: BaseEventStorage, workers: _Workers, events: list[TaskEvent],
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
        return await _caught_up(storage, "scale")

    await async_wait_until(caught_up, timeout=120, interval=0.05, what="the group caught up")
    return workers.stop(), positions


async def test_four_processes_share_one_file_each_event_once(tmp_path: Path) -> None:
    path = tmp_path / "group.db"
    events = _retry_workload(6_000)
    workers = _Workers(tmp_path, _url(path, 5.0), "scale")
    try:
        async with SQLiteBackend(path) as storage:
            results, positions = await run_four_members(
                storage, workers, events, lambda: _spread(path, "scale"))
    finally:
        workers.kill_all()
    assert positions == sorted(positions)  # the group's position never went back
    check_group_results(results, events, await _single(path, len(events)))


def _move_member_elsewhere(path: Path, member: str) -> None:
    """Make ``member``'s row say it ran on another machine (whose processes we cannot see)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("UPDATE omniq_members SET host = 'elsewhere' WHERE member = ?", (member,))
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize(("lease", "remote"), [(3600.0, False), (1.0, True)])
async def test_sigkilled_member_partitions_are_taken_over(
    tmp_path: Path, lease: float, remote: bool
) -> None:
    """Its process gone from this machine: at once, even with an hour's lease. On another
    machine: once its lease (here 1 s) expired."""
    path = tmp_path / "kill.db"
    workers = _Workers(tmp_path, _url(path, lease), "group")
    events = _events(10, prefix="before") + _events(1, prefix="hold") + _events(9)
    try:
        async with SQLiteBackend(path) as storage:
            workers.start("a", "--hold", str(tmp_path / "never"), "--batch-size", "20")
            workers.wait_ready()
            await storage.append(events)
            holding = Path(f"{workers.out('a')}.holding")
            wait_until(holding.exists, timeout=30, what="worker a blocked on 'hold0'")
            assert set(workers.handled_log("a")) <= {e.event_id for e in events[:10]}
            workers.procs["a"].kill()
            assert workers.procs["a"].wait() == -9
            if remote:
                _move_member_elsewhere(path, "a")
            workers.start("b", "--batch-size", "20")
            workers.wait_ready("b")
            wait_until(lambda: len(workers.handled_log("b")) == len(events), timeout=30,
                       what="worker b handled all events")
            await async_wait_until(lambda: _caught_up(storage, "group"), timeout=10)
            results = workers.stop()
    finally:
        workers.kill_all()
    # b redid what a held unacknowledged (at-least-once), and nothing more.
    assert sorted(results["b"]["handled"]) == sorted(e.event_id for e in events)


def recording_member(
    storage: BaseEventStorage, member: str
) -> tuple[AsyncEventProcessor, list[str]]:
    """A processor of group ``g`` that records the task id of each event it handles."""
    processor = AsyncEventProcessor(storage, "g", member=member, idle_timeout=0.05)
    seen: list[str] = []
    processor.register_handler(lambda e: seen.append(e.task_id))
    return processor, seen


async def test_a_stopped_member_hands_its_partitions_over_at_once(tmp_path: Path) -> None:
    # A lease of an hour: only the release on stop can hand the partitions over in time.
    async with SQLiteBackend(tmp_path / "stop.db", lease_seconds=3600.0) as storage:
        first, seen_a = recording_member(storage, "a")
        running = asyncio.ensure_future(first.start())
        await storage.append(_events(50, prefix="x"))
        await async_wait_until(lambda: len(seen_a) == 50, what="a handled 50")
        await first.stop()
        await running
    async with SQLiteBackend(tmp_path / "stop.db", lease_seconds=3600.0) as storage:
        second, seen_b = recording_member(storage, "b")
        await storage.append(_events(30, prefix="y"))
        assert await second.process_events_once() == 30
        assert seen_b == [f"y{i}" for i in range(30)]
        assert await storage.get_position("g") == await storage.last_position()


def test_partition_of_is_crc32_of_the_task_id() -> None:
    assert PARTITIONS == 16
    for task in ("t1", "task-42", "é", "0" * 512):
        assert partition_of(task) == zlib.crc32(task.encode()) % 16
    assert {partition_of(f"t{i}") for i in range(1000)} == set(range(16))
