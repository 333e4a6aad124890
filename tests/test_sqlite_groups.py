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
from pathlib import Path

import pytest
from _groups import (
    Workers,
    caught_up_with,
    check_group_results,
    queued,
    recording_member,
    retry_workload,
    run_four_members,
    single_samples,
)
from _helpers import async_wait_until, wait_until

from omniq_observe.backend import SQLiteBackend
from omniq_observe.backend._partitions import PARTITIONS, partition_of


def _url(path: Path, lease: float) -> str:
    return f"sqlite:///{path}?lease_seconds={lease}"


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


async def test_four_processes_share_one_file_each_event_once(tmp_path: Path) -> None:
    path = tmp_path / "group.db"
    events = retry_workload(6_000)
    workers = Workers(tmp_path, _url(path, 5.0), "scale")
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
    workers = Workers(tmp_path, _url(path, lease), "group")
    events = queued(10, prefix="before") + queued(1, prefix="hold") + queued(9)
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
            await async_wait_until(lambda: caught_up_with(storage, "group"), timeout=10)
            results = workers.stop()
    finally:
        workers.kill_all()
    # b redid what a held unacknowledged (at-least-once), and nothing more.
    assert sorted(results["b"]["handled"]) == sorted(e.event_id for e in events)


async def test_a_stopped_member_hands_its_partitions_over_at_once(tmp_path: Path) -> None:
    # A lease of an hour: only the release on stop can hand the partitions over in time.
    async with SQLiteBackend(tmp_path / "stop.db", lease_seconds=3600.0) as storage:
        first, seen_a = recording_member(storage, "a")
        running = asyncio.ensure_future(first.start())
        await storage.append(queued(50, prefix="x"))
        await async_wait_until(lambda: len(seen_a) == 50, what="a handled 50")
        await first.stop()
        await running
    async with SQLiteBackend(tmp_path / "stop.db", lease_seconds=3600.0) as storage:
        second, seen_b = recording_member(storage, "b")
        await storage.append(queued(30, prefix="y"))
        assert await second.process_events_once() == 30
        assert seen_b == [f"y{i}" for i in range(30)]
        assert await storage.get_position("g") == await storage.last_position()


def test_partition_of_is_crc32_of_the_task_id() -> None:
    assert PARTITIONS == 16
    for task in ("t1", "task-42", "é", "0" * 512):
        assert partition_of(task) == zlib.crc32(task.encode()) % 16
    assert {partition_of(f"t{i}") for i in range(1000)} == set(range(16))
