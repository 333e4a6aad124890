"""Redis processor groups: task-routed partition streams, leased by the members.

* four processes of one group share 100,000 events with retries: each event handled once,
  every task's events in one process, and their Prometheus numbers add up exactly to a
  single processor's;
* a SIGKILLed member's partitions, and what it held unacknowledged, are taken over at once
  when its process on this machine is gone, else once its lease ended: nothing lost,
  nothing handled twice beyond the batch it held;
* a stopped member hands its partitions over at once, and a joining one gets its share.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from _groups import (
    Workers,
    caught_up_with,
    check_group_results,
    queued,
    recording_member,
    redis_holders,
    retry_workload,
    run_four_members,
    single_samples,
    storage_url,
)
from _helpers import REDIS_URL, async_wait_until, wait_until
from _server_backends import make_redis

from omniq_observe.backend.redis import RedisBackend
from omniq_observe.backend.redis._core import parse_stream_id


async def test_four_processes_share_100k_events_with_retries_and_sum_to_one(
    tmp_path: Path,
) -> None:
    storage = make_redis(claim_idle=5.0)
    events = retry_workload(25_000)
    assert len(events) == 100_002  # 25,000 tasks, 8,334 of them retried
    workers = Workers(tmp_path, storage_url(storage), "scale")
    try:
        results, positions = await run_four_members(storage, workers, events,
                                                    lambda: _spread(storage))
        single = await single_samples(storage, len(events))
    finally:
        workers.kill_all()
        await storage.close()
    # The group's position never went back.
    assert positions == sorted(positions, key=parse_stream_id)
    check_group_results(results, events, single)


async def _spread(storage: RedisBackend) -> bool:
    return sorted((await redis_holders(storage, "scale")).values()) == [4, 4, 4, 4]


@pytest.mark.parametrize(("lease", "remote"), [(3600.0, False), (1.0, True)])
async def test_sigkilled_member_partitions_and_held_events_are_taken_over(
    tmp_path: Path, lease: float, remote: bool
) -> None:
    """Its process gone from this machine: at once, even with an hour's lease. On another
    machine: once its lease (here 1 s) ended."""
    storage = make_redis(claim_idle=lease)
    workers = Workers(tmp_path, storage_url(storage), "group")
    events = queued(10, prefix="before") + queued(1, prefix="hold") + queued(9)
    try:
        workers.start("a", "--hold", str(tmp_path / "never"), "--batch-size", "20")
        workers.wait_ready()
        await storage.append(events)
        holding = Path(f"{workers.out('a')}.holding")
        wait_until(holding.exists, timeout=30, what="worker a blocked on 'hold0'")
        handled_by_a = set(workers.handled_log("a"))
        assert handled_by_a <= {e.event_id for e in events[:10]}
        workers.procs["a"].kill()
        assert workers.procs["a"].wait() == -9
        if remote:  # as if it ran on another machine, whose processes we cannot see
            admin = aioredis.Redis.from_url(REDIS_URL)
            await admin.hset(f"{storage.prefix}:hosts:group", "a", "elsewhere 1")
            await admin.aclose()
        workers.start("b", "--batch-size", "20")
        workers.wait_ready("b")
        wait_until(lambda: len(workers.handled_log("b")) == len(events), timeout=30,
                   what="worker b handled all events")
        await async_wait_until(lambda: caught_up_with(storage, "group"), timeout=10)
        assert await redis_holders(storage, "group") == {"b": 16}
        results = workers.stop()
    finally:
        workers.kill_all()
        await storage.close()
    # b redid what a held unacknowledged (at-least-once), and nothing more.
    assert sorted(results["b"]["handled"]) == sorted(e.event_id for e in events)


async def test_a_stopped_member_hands_over_at_once_and_a_new_one_gets_its_share() -> None:
    # A lease of an hour: only the release on stop can hand the partitions over in time.
    storage = make_redis(claim_idle=3600.0, claim_interval=0.05)
    try:
        first, seen_a = recording_member(storage, "a")
        running = asyncio.ensure_future(first.start())
        await storage.append(queued(50, prefix="x"))
        await async_wait_until(lambda: len(seen_a) == 50, what="a handled 50")
        assert await redis_holders(storage, "g") == {"a": 16}
        second, seen_b = recording_member(storage, "b")
        joining = asyncio.ensure_future(second.start())
        await async_wait_until(
            lambda: _shared(storage), timeout=10, what="a and b holding 8 partitions each"
        )
        await first.stop()
        await running
        await async_wait_until(  # at b's next renewal, not in an hour
            lambda: _alone(storage), timeout=5, what="b holding all 16 partitions")
        await storage.append(queued(30, prefix="y"))
        await async_wait_until(lambda: len(seen_b) == 30, what="b handled the 30 new")
        assert sorted(seen_b) == sorted(f"y{i}" for i in range(30))
        await second.stop()
        await joining
        assert await storage.get_position("g") == await storage.last_position()
    finally:
        await storage.close()


async def _shared(storage: RedisBackend) -> bool:
    return await redis_holders(storage, "g") == {"a": 8, "b": 8}


async def _alone(storage: RedisBackend) -> bool:
    return await redis_holders(storage, "g") == {"b": 16}
