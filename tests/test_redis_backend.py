"""RedisBackend specifics on the real Redis (the shared contract is test_backend_contract)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import msgspec
import pytest
import redis.asyncio as aioredis
from _groups import redis_holders
from _helpers import REDIS_URL, async_wait_until
from _server_backends import TestRedisBackend, make_redis

from omniq_observe.backend import Consumer, DeadLetter, StoredEvent, from_url
from omniq_observe.backend.redis import RedisBackend
from omniq_observe.backend.redis._core import parse_stream_id
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exceptions import ConfigurationError, InvalidURLError
from omniq_observe.models.event import TaskEvent, encode_event


@pytest.fixture
async def redis_backend() -> AsyncIterator[TestRedisBackend]:
    storage = make_redis(claim_idle=0.2, claim_interval=0.05)
    try:
        yield storage
    finally:
        await storage.close()


async def _blocked_in_xread(probe: aioredis.Redis) -> bool:
    """True when some client of the server is blocked in XREAD right now."""
    clients = await probe.client_list()
    return any(c.get("cmd") == "xread" and "b" in c.get("flags", "") for c in clients)


def enqueued_events(n: int, task: str = "t") -> list[TaskEvent]:
    return [TaskEvent(task_id=f"{task}{i % 3}", event_type="ENQUEUED", details={"i": i})
            for i in range(n)]


async def test_from_url_takes_our_parameters_and_passes_the_rest() -> None:
    storage = from_url(
        "redis://127.0.0.1:6379/3?prefix=svc&claim_idle=5&max_len=100&health_check_interval=7"
    )
    assert isinstance(storage, RedisBackend)
    assert (storage.prefix, storage.claim_idle, storage.max_len) == ("svc", 5.0, 100)
    assert storage.url == "redis://127.0.0.1:6379/3?health_check_interval=7"
    assert storage.stream == "svc:events"
    with pytest.raises(InvalidURLError, match="max_len='many' is not a valid int"):
        from_url("redis://127.0.0.1/0?max_len=many")
    with pytest.raises(ConfigurationError, match="claim_idle must be a positive number"):
        RedisBackend(claim_idle=0)
    assert from_url("redis://127.0.0.1/0?partitions=4").partitions == 4  # type: ignore[attr-defined]
    for bad in (0, 1025, True):
        with pytest.raises(ConfigurationError, match=r"partitions must be a positive integer "
                                                     rf"\(at most 1024\) or None, got {bad}"):
            RedisBackend(partitions=bad)
    with pytest.raises(ConfigurationError, match="max_batch must be a positive integer, got 0"):
        RedisBackend(max_batch=0)


async def test_a_waiting_processor_wakes_on_a_new_event_not_on_its_timeout(
    redis_backend: TestRedisBackend,
) -> None:
    processor = AsyncEventProcessor(redis_backend, "wake", idle_timeout=5.0)
    arrived: list[float] = []
    processor.register_handler(lambda e: arrived.append(time.monotonic()))
    probe = aioredis.from_url(REDIS_URL)
    runner = asyncio.ensure_future(processor.start())
    try:
        await redis_backend.append(enqueued_events(1))
        await async_wait_until(lambda: len(arrived) == 1)
        await async_wait_until(lambda: processor.stats.caught_up and processor.stats.batches == 1)
        latencies = []
        for n in range(2, 7):
            await async_wait_until(lambda: _blocked_in_xread(probe), what="a blocked XREAD")
            sent = time.monotonic()
            await redis_backend.append(enqueued_events(1))
            await async_wait_until(lambda n=n: len(arrived) == n, timeout=4.0)
            latencies.append(arrived[-1] - sent)
    finally:
        await processor.stop()
        await runner
        await probe.aclose()
    # Woken by the blocking read: far below the 5 s idle timeout a poll would wait.
    assert max(latencies) < 1.0, latencies


def _tasks(n: int, tasks: int = 40) -> list[TaskEvent]:
    return [TaskEvent(task_id=f"task{i % tasks}", event_type="ENQUEUED", details={"i": i})
            for i in range(n)]


async def test_members_divide_the_partitions_and_each_task_stays_with_one(
    redis_backend: TestRedisBackend,
) -> None:
    a, b = Consumer("g", "a"), Consumer("g", "b")
    early = _tasks(40)
    await redis_backend.append(early)
    first = await redis_backend.claim(a, 100)  # alone: a holds all 16 partitions
    assert [s.event for s in first] == early
    await redis_backend.ack(a, first)
    assert await redis_holders(redis_backend, "g") == {"a": 16}
    assert await redis_backend.claim(b, 100) == []  # a's leases last: b waits its turn

    async def divided() -> bool:  # a gives up b's share at a renewal; b takes it then
        for member in (a, b):
            await redis_backend.ack(member, await redis_backend.claim(member, 100))
        return await redis_holders(redis_backend, "g") == {"a": 8, "b": 8}

    await async_wait_until(divided, timeout=10, what="a and b holding 8 partitions each")
    late = _tasks(400)
    await redis_backend.append(late)
    got = {m.member: await redis_backend.claim(m, 1000) for m in (a, b)}
    assert sorted(s.event.event_id for m in got.values() for s in m) == sorted(
        e.event_id for e in late)  # every event once
    tasks_of = {name: {s.event.task_id for s in batch} for name, batch in got.items()}
    assert not tasks_of["a"] & tasks_of["b"]  # each task with one member
    for batch in got.values():  # in log order, and the order of each task kept
        assert [s.position for s in batch] == sorted((s.position for s in batch),
                                                     key=parse_stream_id)
        await redis_backend.ack(Consumer("g", "a" if batch is got["a"] else "b"), batch)
    assert await redis_backend.get_position("g") == await redis_backend.last_position()


async def test_reading_merges_the_partitions_in_append_order(
    redis_backend: TestRedisBackend,
) -> None:
    events = _tasks(300, tasks=37)
    for start in range(0, 300, 50):
        await redis_backend.append(events[start : start + 50])
    read: list[StoredEvent] = []
    position = None
    while page := await redis_backend.read_after(position, 7):
        read += page
        position = page[-1].position
    assert [s.event for s in read] == events
    assert position == await redis_backend.last_position()
    assert await redis_backend.count() == 300
    assert redis_backend.keys.partitions == 16
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        lengths = [await admin.xlen(stream) for stream in redis_backend.keys.streams]
    finally:
        await admin.aclose()
    assert sum(lengths) == 300 and min(lengths) > 0
    by_task = await redis_backend.task_history("task5")
    assert by_task == [e for e in events if e.task_id == "task5"]


async def test_a_silent_members_partitions_and_entries_are_taken_over_after_its_lease(
    redis_backend: TestRedisBackend,
) -> None:
    await redis_backend.append(enqueued_events(5))
    dead, alive = Consumer("g", "dead"), Consumer("g", "alive")
    held = await redis_backend.claim(dead, 5)
    assert len(held) == 5
    assert await redis_backend.claim(alive, 5) == []  # not idle long enough yet
    taken = await async_wait_until(lambda: redis_backend.claim(alive, 5), timeout=5)
    assert [s.position for s in taken] == [s.position for s in held]
    await redis_backend.ack(alive, taken)
    assert await redis_backend.get_position("g") == held[-1].position


async def test_release_hands_entries_over_at_once() -> None:
    storage = make_redis(claim_idle=3600.0, claim_interval=0.05)
    try:
        await storage.append(enqueued_events(4))
        leaving, staying = Consumer("g", "leaving"), Consumer("g", "staying")
        held = await storage.claim(leaving, 4)
        await storage.release(leaving)
        taken = await storage.claim(staying, 4)
        assert [s.position for s in taken] == [s.position for s in held]
    finally:
        await storage.close()


async def test_commit_position_moves_an_existing_group(redis_backend: TestRedisBackend) -> None:
    await redis_backend.append(enqueued_events(6))
    consumer = Consumer("g", "m")
    first = await redis_backend.claim(consumer, 2)
    await redis_backend.ack(consumer, first)
    stored = await redis_backend.read_after(None, 10)
    await redis_backend.commit_position("g", stored[3].position)
    assert await redis_backend.get_position("g") == stored[3].position
    assert [s.position for s in await redis_backend.claim(consumer, 10)] == [
        s.position for s in stored[4:]
    ]


async def test_task_history_index_expires_and_skips_pruned_events() -> None:
    storage = make_redis(history_ttl=30.0)
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        events = enqueued_events(9)
        await storage.append(events)
        ttl = await admin.pttl(f"{storage.prefix}:task:t0")
        assert 29_000 < ttl <= 30_000
        assert await storage.task_history("t0") == events[0::3]
        assert await storage.task_history("t0", limit=2) == events[0:6:3]
        assert await storage.prune(max_events=4) == 5
        assert await storage.task_history("t0") == [events[6]]
    finally:
        await admin.aclose()
        await storage.close()


async def test_max_len_trims_the_streams_on_write() -> None:
    one, sixteen = make_redis(max_len=100, partitions=1), make_redis(max_len=1600)
    try:
        for _ in range(10):
            await one.append(enqueued_events(100))
            await sixteen.append(_tasks(1600, tasks=1000))
        # MAXLEN ~ trims whole stream nodes (100 entries each): between 100 and 200 stay,
        # in each stream of 16 (a 16th of max_len each).
        assert 100 <= await one.count() < 200
        assert 1600 <= await sixteen.count() < 3200
    finally:
        await one.close()
        await sixteen.close()


async def test_dead_letters_survive_a_new_backend_instance(
    redis_backend: TestRedisBackend,
) -> None:
    await redis_backend.append(enqueued_events(1))
    stored = (await redis_backend.read_after(None, 1))[0]
    dead = DeadLetter("g", "h", "ValueError: x", 3, stored.event, stored.position)
    await redis_backend.record_dead_letter(dead)
    other = RedisBackend(REDIS_URL, prefix=redis_backend.prefix)
    try:
        assert await other.dead_letters("g") == [dead]
    finally:
        await other.close()


async def test_an_append_repeated_after_a_lost_reply_stores_each_event_once() -> None:
    storage = make_redis(dedup_window=4)
    try:
        events = enqueued_events(5)
        await storage.append(events[:3])
        await storage.append(events)  # the retry of a write that had committed, plus new ones
        await storage.append([events[4], events[4]])  # a repeat inside one batch
        assert [s.event for s in await storage.read_after(None, 10)] == events
        # The window: 4 ids per set, two sets. After 8 newer ids the oldest are forgotten.
        newer = enqueued_events(8, task="n")
        await storage.append(newer)
        await storage.append(events[:1])
        assert await storage.count() == 14  # remembered no longer: stored again
        await storage.append(newer[-4:])
        assert await storage.count() == 14
    finally:
        await storage.close()


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _remembered(storage: RedisBackend) -> int:
    """How many event ids the store's dedup state remembers (each in a compact hash)."""
    client = storage.client()
    keys = [key async for key in client.scan_iter(match=f"{storage.prefix}:dedup:*")]
    assert {await client.object("encoding", key) for key in keys} <= {b"listpack"}
    return sum([int(await client.hlen(key)) for key in keys])


async def test_prune_forgets_the_pruned_ids_and_a_stored_event_sent_again_is_skipped() -> None:
    storage = make_redis(dedup_window=100, partitions=2)
    try:
        events = [TaskEvent(task_id=f"t{i % 3}", event_type="ENQUEUED", timestamp=_at(i))
                  for i in range(10)]
        # Ids the dedup state keeps as they are: 16 long, short, an upper-case UUID.
        for i, event_id in enumerate(("sixteen-chars-id", "e-1",
                                      "0192F0E0-1C2B-7ABC-8DEF-0123456789AB")):
            events[i] = msgspec.structs.replace(events[i], event_id=event_id)
        await storage.append(events)
        assert await _remembered(storage) == 10
        assert await storage.prune(older_than=_at(4)) == 4  # trimmed by the prune script
        assert await _remembered(storage) == 6
        late = TaskEvent(task_id="t0", event_type="STARTED", timestamp=_at(3.5))
        await storage.append([late])  # stored after event 9, within the margin
        assert await _remembered(storage) == 7
        assert await storage.prune(older_than=_at(5)) == 2  # event 4 trimmed, late deleted
        assert await _remembered(storage) == 5
        await storage.append([*events, late])  # the stored ones are skipped, the rest kept
        assert await _remembered(storage) == 11
        stored = [s.event for s in await storage.read_after(None, 20)]
        assert stored == [*events[5:], *events[:5], late]
    finally:
        await storage.close()


async def test_the_recent_id_sets_of_an_older_store_go_at_the_first_new_generation() -> None:
    storage = make_redis(dedup_window=2)
    try:
        client = storage.client()
        await storage.append(enqueued_events(1))
        old_sets = [f"{storage.prefix}:recent", f"{storage.prefix}:recent:old"]
        for key in old_sets:
            await client.sadd(key, "x")
        await storage.append(enqueued_events(1, task="u"))
        assert await client.exists(*old_sets) == 0
        assert await _remembered(storage) == 2
    finally:
        await storage.close()


T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


async def test_entry_ids_follow_event_time_and_late_events_are_still_found() -> None:
    storage = make_redis()
    try:
        timed = [TaskEvent(task_id=f"t{i}", event_type="STARTED", timestamp=_at(i))
                 for i in range(100)]
        await storage.append(timed)
        stored = await storage.read_after(None, 200)
        expected = [f"{int(_at(i).timestamp() * 1000)}-0" for i in range(100)]
        assert [s.position for s in stored] == expected
        # An event logged an hour after its time: its id is after every other's, it is
        # in the late index, and a query for its time finds it.
        late = TaskEvent(task_id="late", event_type="FAILED", timestamp=_at(10.5))
        await storage.append([late])
        page = await storage.query(since=_at(10), until=_at(12))
        assert [s.event for s in page.events] == [timed[10], timed[11], late]
        page = await storage.query(since=_at(10), until=_at(12), limit=2)
        assert [s.event for s in page.events] == timed[10:12]
        rest = await storage.query(since=_at(10), until=_at(12), limit=2, after=page.next_cursor)
        assert [s.event for s in rest.events] == [late] and rest.next_cursor is None
    finally:
        await storage.close()


async def test_prune_trims_by_time_and_removes_the_task_index_of_pruned_tasks() -> None:
    storage = make_redis()
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        events = [TaskEvent(task_id=f"t{i // 2}", event_type="STARTED", timestamp=_at(i))
                  for i in range(20)]
        late = TaskEvent(task_id="t9", event_type="FAILED", timestamp=_at(3))
        await storage.append(events)
        await storage.append([late])
        assert await storage.prune(older_than=_at(11)) == 12  # 0..10 and the late one
        assert [s.event for s in await storage.read_after(None, 50)] == events[11:]
        keys = sorted([k.decode() async for k in admin.scan_iter(f"{storage.prefix}:task:*")])
        assert keys == [f"{storage.prefix}:task:t{i}" for i in range(5, 10)]
        assert await storage.task_history("t5") == [events[11]]
        assert await storage.task_history("t9") == events[18:20]
        assert await admin.zcard(f"{storage.prefix}:late") == 0
    finally:
        await admin.aclose()
        await storage.close()


async def test_the_redis_extra_brings_hiredis_and_the_backend_uses_it(
    redis_backend: TestRedisBackend,
) -> None:
    requires = importlib.metadata.requires("omniq-observe") or []
    assert any(r.startswith("hiredis") and 'extra == "redis"' in r for r in requires), requires
    await redis_backend.health()
    pool = redis_backend.client().connection_pool
    connection = await pool.get_connection()
    try:
        assert type(connection._parser).__name__ == "_AsyncHiredisParser"
    finally:
        await pool.release(connection)


async def test_under_max_len_the_late_index_stays_bounded() -> None:
    storage = make_redis(max_len=5)
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        await storage.append([TaskEvent(task_id="now", event_type="STARTED")])
        hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
        await storage.append([TaskEvent(task_id=f"old{i}", event_type="STARTED",
                                        timestamp=hour_ago + timedelta(seconds=i))
                              for i in range(8)])
        assert await admin.zcard(f"{storage.prefix}:late") == 5
    finally:
        await admin.aclose()
        await storage.close()


async def test_a_version_1_stream_is_read_and_appended_to() -> None:
    """Version 1 wrote ``XADD * e <body>`` (append-time ids, no ``t``)."""
    storage = make_redis()
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        old = enqueued_events(3)
        for event in old:
            entry_id = await admin.xadd(f"{storage.prefix}:events", {"e": encode_event(event)})
            await admin.rpush(f"{storage.prefix}:task:{event.task_id}", entry_id)
        new = TaskEvent(task_id="t0", event_type="STARTED")
        await storage.append([new])
        assert [s.event for s in await storage.read_after(None, 10)] == [*old, new]
        assert await storage.task_history("t0") == [old[0], new]
        assert [s.event for s in await storage.claim(Consumer("g"), 10)] == [*old, new]
        # A store made before partitions is one partition; asking for more says so.
        assert storage.keys.partitions == 1
        with pytest.raises(ConfigurationError, match="partitions=16 but the store under "
                                                     f"prefix '{storage.prefix}' has 1"):
            async with RedisBackend(REDIS_URL, prefix=storage.prefix, partitions=16) as other:
                await other.count()
    finally:
        await admin.aclose()
        await storage.close()


async def test_events_of_any_year_are_stored_and_found_by_task(
    redis_backend: TestRedisBackend,
) -> None:
    """Before 1970 an entry id cannot follow the event's time (the first is 0-1); far
    from now the time goes to the append script clamped (it packs time and partition)."""
    years = (1, 1500, 1969, 2024, 9999)
    events = [TaskEvent(task_id=f"y{year}", event_type="STARTED",
                        timestamp=datetime(year, 1, 1, tzinfo=timezone.utc)) for year in years]
    await redis_backend.append(events)
    stored = await redis_backend.read_after(None, 10)
    assert [s.event for s in stored] == events
    assert [s.position for s in stored[:3]] == ["0-1", "0-2", "0-3"]
    for event in events:
        assert await redis_backend.task_history(event.task_id) == [event]


async def test_entries_delivered_in_a_lost_reply_are_read_again(
    redis_backend: TestRedisBackend,
) -> None:
    """redis-py retries a read whose connection died: the entries the first read delivered
    are pending for the member, unseen. With nothing in hand, it reads them again."""
    consumer = Consumer("g", "m")
    await redis_backend.append(_tasks(10))
    await redis_backend.ack(consumer, await redis_backend.claim(consumer, 100))
    lost = _tasks(5, tasks=5)
    await redis_backend.append(lost)
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:  # the first read, whose reply never came back
        delivered = await admin.xreadgroup(
            "g", "m", dict.fromkeys(redis_backend.keys.streams, ">"), count=100)
    finally:
        await admin.aclose()
    assert sum(len(entries) for _, entries in delivered) == 5
    got: list[TaskEvent] = []

    async def read_again() -> bool:
        batch = await redis_backend.claim(consumer, 100)
        await redis_backend.ack(consumer, batch)
        got.extend(s.event for s in batch)
        return len(got) >= 5

    await async_wait_until(read_again, timeout=10, what="the lost entries read again")
    assert got == lost
