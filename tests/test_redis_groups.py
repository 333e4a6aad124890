"""Redis processor groups: task-routed partition streams, leased by the members.

* four processes of one group share 100,000 events with retries: each event handled once,
  every task's events in one process, and their Prometheus numbers add up exactly to a
  single processor's;
* a SIGKILLed member's partitions, and what it held unacknowledged, are taken over once its
  lease ended: nothing lost, nothing handled twice beyond the batch it held;
* a stopped member hands its partitions over at once, and a joining one gets its share.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis
from _server_backends import make_redis
from conftest import REDIS_URL, async_wait_until, wait_until
from test_distributed import _caught_up, _events, _url, _Workers
from test_sqlite_groups import _retry_workload, check_group_results, single_samples

from omniq_observe.backend.redis import RedisBackend
from omniq_observe.events import AsyncEventProcessor


async def _holders(storage: RedisBackend, group: str) -> Counter[str]:
    """How many partitions each member of ``group`` holds a lease on."""
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        leases = await admin.hgetall(f"{storage.prefix}:leases:{group}")
    finally:
        await admin.aclose()
    return Counter(value.decode().split(" ", 1)[1] for value in leases.values())


async def test_four_processes_share_100k_events_with_retries_and_sum_to_one(
    tmp_path: Path,
) -> None:
    storage = make_redis(claim_idle=5.0)
    events = _retry_workload(25_000)
    assert len(events) == 100_002  # 25,000 tasks, 8,334 of them retried
    workers = _Workers(tmp_path, _url(storage), "scale")
    positions: list[str] = []
    try:
        for n in range(4):
            workers.start(f"p{n}", "--batch-size", "500")
        workers.wait_ready()
        # Let the members divide the partitions first, so that every task's events go to
        # one member from its first event on.
        await async_wait_until(lambda: _spread(storage), timeout=30, interval=0.05,
                               what="four members holding four partitions each")
        for i in range(0, len(events), 5000):
            await storage.append(events[i : i + 5000])

        async def caught_up() -> bool:
            position = await storage.get_position("scale")
            if position is not None:
                positions.append(str(position))
            return await _caught_up(storage, "scale")

        await async_wait_until(caught_up, timeout=120, interval=0.1, what="the group caught up")
        results = workers.stop()
        single = await single_samples(storage, len(events))
    finally:
        workers.kill_all()
        await storage.close()
    # The group's position never went back.
    assert positions == sorted(positions, key=lambda p: tuple(map(int, p.split("-"))))
    check_group_results(results, events, single)


async def _spread(storage: RedisBackend) -> bool:
    return sorted((await _holders(storage, "scale")).values()) == [4, 4, 4, 4]


async def test_sigkilled_member_partitions_and_held_events_are_taken_over(
    tmp_path: Path,
) -> None:
    storage = make_redis(claim_idle=1.0)
    workers = _Workers(tmp_path, _url(storage), "group")
    events = _events(10, prefix="before") + _events(1, prefix="hold") + _events(9)
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
        workers.start("b", "--batch-size", "20")
        workers.wait_ready("b")
        wait_until(lambda: len(workers.handled_log("b")) == len(events), timeout=30,
                   what="worker b handled all events")
        await async_wait_until(lambda: _caught_up(storage, "group"), timeout=10)
        assert await _holders(storage, "group") == {"b": 16}
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
        first = AsyncEventProcessor(storage, "g", member="a", idle_timeout=0.05)
        seen_a: list[str] = []
        first.register_handler(lambda e: seen_a.append(e.task_id))
        running = asyncio.ensure_future(first.start())
        await storage.append(_events(50, prefix="x"))
        await async_wait_until(lambda: len(seen_a) == 50, what="a handled 50")
        assert await _holders(storage, "g") == {"a": 16}
        second = AsyncEventProcessor(storage, "g", member="b", idle_timeout=0.05)
        seen_b: list[str] = []
        second.register_handler(lambda e: seen_b.append(e.task_id))
        joining = asyncio.ensure_future(second.start())
        await async_wait_until(
            lambda: _shared(storage), timeout=10, what="a and b holding 8 partitions each"
        )
        await first.stop()
        await running
        await async_wait_until(  # at b's next renewal, not in an hour
            lambda: _alone(storage), timeout=5, what="b holding all 16 partitions")
        await storage.append(_events(30, prefix="y"))
        await async_wait_until(lambda: len(seen_b) == 30, what="b handled the 30 new")
        assert sorted(seen_b) == sorted(f"y{i}" for i in range(30))
        await second.stop()
        await joining
        assert await storage.get_position("g") == await storage.last_position()
    finally:
        await storage.close()


async def _shared(storage: RedisBackend) -> bool:
    return await _holders(storage, "g") == {"a": 8, "b": 8}


async def _alone(storage: RedisBackend) -> bool:
    return await _holders(storage, "g") == {"b": 16}
