"""The storage contract, run on every backend in ``BACKEND_FACTORIES`` (the ``backend`` fixture).

Only the :class:`BaseEventStorage` API is used. Positions are opaque: they are compared
only by equality and passed back to the backend, never computed with (Redis positions are
``"ms-seq"`` strings).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from omniq_observe.backend import BaseEventStorage, Consumer, DeadLetter, Health, Page
from omniq_observe.events import AsyncEventLogger
from omniq_observe.models.event import TaskEvent, encode_event

UTC = timezone.utc
T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def make_events(count: int, *, start: int = 0, tasks: int = 3) -> list[TaskEvent]:
    """``count`` events, one second apart from T0, types cycling ENQUEUED/STARTED/COMPLETED."""
    types = ("ENQUEUED", "STARTED", "COMPLETED")
    return [
        TaskEvent(
            task_id=f"task-{i % tasks}",
            event_type=types[i % 3],
            timestamp=T0 + timedelta(seconds=i),
            details={"seq": i, "queue_name": "q"},
        )
        for i in range(start, start + count)
    ]


async def read_all(backend: BaseEventStorage, limit: int = 1000) -> list[TaskEvent]:
    stored = await backend.read_after(None, limit)
    return [s.event for s in stored]


async def test_empty_backend(backend: BaseEventStorage) -> None:
    assert await backend.read_after(None, 10) == []
    assert await backend.count() == 0
    assert await backend.last_position() is None
    assert await backend.get_position("g") is None
    assert await backend.task_history("task-0") == []
    page = await backend.query()
    assert page == Page([], None)


async def test_append_then_read_in_order_with_equal_events(backend: BaseEventStorage) -> None:
    events = make_events(10)
    await backend.append(events[:4])
    await backend.append(events[4:])
    await backend.append([])  # an empty batch is a no-op
    stored = await backend.read_after(None, 100)
    assert [s.event for s in stored] == events
    assert len({s.position for s in stored}) == 10
    assert await backend.count() == 10
    assert await backend.last_position() == stored[-1].position


async def test_read_after_a_position_with_limit_pages_through_the_log(
    backend: BaseEventStorage,
) -> None:
    events = make_events(25)
    await backend.append(events)
    seen: list[TaskEvent] = []
    position = None
    pages = 0
    while True:
        page = await backend.read_after(position, 10)
        if not page:
            break
        pages += 1
        assert len(page) == (10 if pages < 3 else 5)
        seen.extend(s.event for s in page)
        position = page[-1].position
    assert seen == events
    assert pages == 3
    middle = (await backend.read_after(None, 100))[11].position
    assert [s.event for s in await backend.read_after(middle, 3)] == events[12:15]


async def test_positions_of_later_appends_come_after(backend: BaseEventStorage) -> None:
    await backend.append(make_events(3))
    last = await backend.last_position()
    assert last is not None
    later = make_events(2, start=3)
    await backend.append(later)
    assert [s.event for s in await backend.read_after(last, 10)] == later


async def test_commit_position_is_per_group_and_durable_in_the_backend(
    backend: BaseEventStorage,
) -> None:
    await backend.append(make_events(5))
    stored = await backend.read_after(None, 10)
    await backend.commit_position("alpha", stored[1].position)
    await backend.commit_position("beta", stored[3].position)
    assert await backend.get_position("alpha") == stored[1].position
    assert await backend.get_position("beta") == stored[3].position
    await backend.commit_position("alpha", stored[4].position)
    assert await backend.get_position("alpha") == stored[4].position
    positions = await backend.positions()
    assert positions["alpha"] == stored[4].position
    assert positions["beta"] == stored[3].position


async def test_claim_and_ack_move_a_group_through_the_log(backend: BaseEventStorage) -> None:
    events = make_events(7)
    await backend.append(events)
    consumer = Consumer("workers")
    first = await backend.claim(consumer, 4)
    assert [s.event for s in first] == events[:4]
    await backend.ack(consumer, first)
    assert await backend.get_position("workers") == first[-1].position
    second = await backend.claim(consumer, 4)
    assert [s.event for s in second] == events[4:]
    await backend.ack(consumer, second)
    assert await backend.claim(consumer, 4) == []
    await backend.release(consumer)


async def test_wait_for_events(backend: BaseEventStorage) -> None:
    consumer = Consumer("waiter")
    assert await backend.has_events_for(consumer) is False
    assert await backend.wait_for_events(consumer, 0.05) is False
    await backend.append(make_events(1))
    assert await backend.has_events_for(consumer) is True
    assert await backend.wait_for_events(consumer, 5.0) is True
    await backend.ack(consumer, await backend.claim(consumer, 10))
    assert await backend.has_events_for(consumer) is False


async def test_wait_for_events_wakes_on_a_new_event(backend: BaseEventStorage) -> None:
    consumer = Consumer("waiter")
    waiter = asyncio.ensure_future(backend.wait_for_events(consumer, 10.0))
    await asyncio.sleep(0)  # let the waiter start before the append
    await backend.append(make_events(1))
    assert await asyncio.wait_for(waiter, 5.0) is True


async def test_a_cancelled_append_fails_none_of_those_it_shares_a_write_with(
    backend: BaseEventStorage,
) -> None:
    await backend.append([TaskEvent(task_id="warm", event_type="STARTED")])  # connected
    events = [TaskEvent(task_id=f"c{i}", event_type="STARTED") for i in range(3)]
    appends = [asyncio.ensure_future(backend.append([event])) for event in events]
    await asyncio.sleep(0)  # one turn: each append has queued its event
    appends[1].cancel()
    results = await asyncio.gather(*appends, return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert results[1] is None or isinstance(results[1], asyncio.CancelledError)
    stored = [s.event for s in await backend.read_after(None, 10)]
    assert stored[1:] == events  # queued before the cancel: written with the others


async def test_task_history_in_log_order_with_limit(backend: BaseEventStorage) -> None:
    events = make_events(12, tasks=3)
    await backend.append(events)
    history = await backend.task_history("task-1")
    assert history == [e for e in events if e.task_id == "task-1"]
    assert [e.details["seq"] for e in history] == [1, 4, 7, 10]
    assert await backend.task_history("task-1", limit=2) == history[:2]
    assert await backend.task_history("nope") == []


async def test_query_by_type_case_insensitive(backend: BaseEventStorage) -> None:
    events = make_events(9)
    await backend.append(events)
    page = await backend.query(event_types=["completed", "ENQUEUED"])
    assert [s.event.details["seq"] for s in page.events] == [0, 2, 3, 5, 6, 8]
    assert page.next_cursor is None


async def test_query_by_time_range_is_half_open(backend: BaseEventStorage) -> None:
    await backend.append(make_events(10))
    page = await backend.query(since=T0 + timedelta(seconds=3), until=T0 + timedelta(seconds=6))
    assert [s.event.details["seq"] for s in page.events] == [3, 4, 5]
    naive = await backend.query(since=datetime(2024, 3, 1, 12, 0, 8))  # naive means UTC
    assert [s.event.details["seq"] for s in naive.events] == [8, 9]
    berlin = timezone(timedelta(hours=1))
    aware = await backend.query(until=datetime(2024, 3, 1, 13, 0, 2, tzinfo=berlin))
    assert [s.event.details["seq"] for s in aware.events] == [0, 1]


async def test_query_by_type_and_time_pages_with_cursor(backend: BaseEventStorage) -> None:
    await backend.append(make_events(30))
    wanted = [i for i in range(30) if i % 3 != 1 and 2 <= i < 28]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = await backend.query(
            event_types=["ENQUEUED", "COMPLETED"],
            since=T0 + timedelta(seconds=2),
            until=T0 + timedelta(seconds=28),
            limit=4,
            after=cursor,
        )
        pages += 1
        seen.extend(s.event.details["seq"] for s in page.events)
        if page.next_cursor is None:
            break
        assert len(page.events) == 4
        cursor = page.next_cursor
    assert seen == wanted
    assert pages == 5  # 17 matches: 4 + 4 + 4 + 4 + 1


async def test_query_exact_last_page_has_no_cursor(backend: BaseEventStorage) -> None:
    await backend.append(make_events(6))
    first = await backend.query(limit=3)
    assert len(first.events) == 3
    assert first.next_cursor == first.events[-1].position
    second = await backend.query(limit=3, after=first.next_cursor)
    assert [s.event.details["seq"] for s in second.events] == [3, 4, 5]
    assert second.next_cursor is None


async def test_prune_by_age(backend: BaseEventStorage) -> None:
    await backend.append(make_events(10))
    deleted = await backend.prune(older_than=T0 + timedelta(seconds=4))
    assert deleted == 4
    assert await backend.count() == 6
    assert [e.details["seq"] for e in await read_all(backend)] == [4, 5, 6, 7, 8, 9]
    assert await backend.prune(older_than=T0) == 0


async def test_prune_by_max_count_keeps_the_newest(backend: BaseEventStorage) -> None:
    await backend.append(make_events(10))
    assert await backend.prune(max_events=3) == 7
    assert [e.details["seq"] for e in await read_all(backend)] == [7, 8, 9]
    assert await backend.prune(max_events=3) == 0
    assert await backend.prune(max_events=0) == 3
    assert await backend.count() == 0


async def test_prune_by_age_and_count(backend: BaseEventStorage) -> None:
    await backend.append(make_events(10))
    deleted = await backend.prune(older_than=T0 + timedelta(seconds=2), max_events=5)
    assert deleted == 5
    assert [e.details["seq"] for e in await read_all(backend)] == [5, 6, 7, 8, 9]


async def test_pruning_everything_never_reuses_positions(backend: BaseEventStorage) -> None:
    await backend.append(make_events(4))
    last = await backend.last_position()
    await backend.commit_position("g", last)  # type: ignore[arg-type]
    assert await backend.prune(older_than=T0 + timedelta(days=1)) == 4
    assert await backend.count() == 0
    fresh = make_events(2, start=100)
    await backend.append(fresh)
    # a processor that had handled everything sees exactly the new events
    assert [s.event for s in await backend.claim(Consumer("g"), 10)] == fresh
    assert [s.event for s in await backend.read_after(last, 10)] == fresh


async def test_round_trip_through_storage_is_lossless(backend: BaseEventStorage) -> None:
    event = TaskEvent(
        task_id="tâche ✓ 🚀",
        event_type="EXPIRED",
        timestamp=datetime(2024, 2, 29, 23, 59, 59, 999999),
        details={
            "unicode": "日本語 — ünïcödé",
            "escapes": 'a "quoted" \\ back\nslash \x00',
            "nested": {"l": [1, 2.5, None, True, {"d": [-1, 1e300, 0.1]}]},
            "big": 2**64 + 1,
        },
        trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )
    await backend.append([event])
    [stored] = await backend.read_after(None, 10)
    assert stored.event == event
    assert stored.event.timestamp.microsecond == 999999
    assert (await backend.task_history("tâche ✓ 🚀")) == [event]
    assert (await backend.query(event_types=["expired"])).events[0].event == event


async def test_every_read_returns_the_wire_form_byte_for_byte(backend: BaseEventStorage) -> None:
    """Floats keep their kind and sign, keys their order: what was logged is what is read."""
    event = TaskEvent(
        task_id="exact",
        event_type="COMPLETED",
        timestamp=T0,
        details={"z": 1e20, "max": 1.7976931348623157e308, "neg": -0.0, "one": 1.0,
                 "int": 10**20, "a": {"y": [0.1, -1e-300], "b": None}, "m": "\u2028\t"},
        trace_context={"tracestate": "b=2,a=1", "traceparent": "00-" + "3" * 32 + "-" + "4" * 16
                       + "-01"},
    )
    wire = encode_event(event)
    assert b'"z":1e+20' in wire or b'"z":1e20' in wire  # a float, not an integer
    await backend.append([event])
    [stored] = await backend.read_after(None, 10)
    [claimed] = await backend.claim(Consumer("exact"), 10)
    reads = [stored.event, claimed.event, *(await backend.task_history("exact")),
             *(p.event for p in (await backend.query(since=T0)).events)]
    assert [encode_event(e) for e in reads] == [wire] * 4
    assert list(stored.event.details) == ["z", "max", "neg", "one", "int", "a", "m"]
    assert str(stored.event.details["neg"]) == "-0.0"


async def test_dead_letters_are_kept_per_group(backend: BaseEventStorage) -> None:
    await backend.append(make_events(2))
    stored = await backend.read_after(None, 10)
    first, second = stored
    dead = DeadLetter("g1", "my_handler", "ValueError: boom", 3, first.event, first.position)
    other = DeadLetter("g2", "h2", "KeyError: 'x'", 1, second.event, second.position)
    await backend.record_dead_letter(dead)
    await backend.record_dead_letter(other)
    assert await backend.dead_letters("g1") == [dead]
    assert await backend.dead_letters() == [dead, other]
    assert await backend.dead_letters("none") == []


async def test_concurrent_log_event_stores_every_event_in_order_per_task(
    backend: BaseEventStorage,
) -> None:
    logger = AsyncEventLogger(event_storage=backend)
    events = [
        TaskEvent(task_id=f"task-{i % 20}", event_type="STARTED", details={"seq": i // 20})
        for i in range(200)
    ]
    await asyncio.gather(*(logger.log_event(e) for e in events))
    stored = await read_all(backend)
    assert len(stored) == 200
    assert len({e.event_id for e in stored}) == 200
    assert sorted(e.event_id for e in stored) == sorted(e.event_id for e in events)
    for task in range(20):
        seqs = [e.details["seq"] for e in stored if e.task_id == f"task-{task}"]
        assert seqs == list(range(10))
    assert logger.stats.logged == 200


async def test_health_and_close(backend: BaseEventStorage) -> None:
    health = await backend.health()
    assert isinstance(health, Health)
    assert health.ok is True
    assert health.backend == backend.backend_name
    await backend.close()
    await backend.close()  # idempotent


async def test_async_context_manager_closes(backend: BaseEventStorage) -> None:
    async with backend as entered:
        assert entered is backend
        await backend.append(make_events(1))
        assert await backend.count() == 1


async def test_append_blocking_is_declared_and_optional(backend: BaseEventStorage) -> None:
    events = make_events(2)
    if backend.can_append_blocking:
        await asyncio.to_thread(backend.append_blocking, events)  # a thread without a loop
        assert await read_all(backend) == events
    else:
        with pytest.raises(NotImplementedError) as info:
            backend.append_blocking(events)
        assert str(info.value) == f"{type(backend).__name__} has no append_blocking; use append"
        assert await backend.count() == 0
    assert backend.can_append_blocking is (backend.backend_name == "sqlite")
