"""Undecodable stored entries never stall a processor (#16 item 7), on every backend.

An entry that cannot be decoded (a rotted SQLite row, a too-deep or garbage entry written
to Redis or PostgreSQL behind the library's back) goes to the dead letters with its raw
bytes and position, is counted, and the processor moves on.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from _helpers import POSTGRES_URL, REDIS_URL
from prometheus_client import CollectorRegistry
from test_backend_contract import make_events

from omniq_observe.backend import (
    BaseEventStorage,
    MemoryBackend,
    PostgresBackend,
    RedisBackend,
    SQLiteBackend,
    UndecodableEvent,
)
from omniq_observe.backend._partitions import partition_of
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exceptions import InvalidEventError
from omniq_observe.handlers import PrometheusHandler
from omniq_observe.models.event import TaskEvent

DEEP = (
    b'{"v":1,"task_id":"deep","event_type":"X","timestamp":"2024-03-01T12:00:00Z",'
    b'"details":{"a":' + b"[" * 1500 + b"]" * 1500 + b"}}"
)
GARBAGE = b"{not json at all"


async def write_raw(backend: BaseEventStorage, body: bytes) -> None:
    """Append ``body`` to the log as it is, behind the backend's back."""
    if isinstance(backend, SQLiteBackend):
        with sqlite3.connect(backend.path) as conn:
            conn.execute(
                "INSERT INTO omniq_events (event_id, task_id, event_type, ts_us, body) "
                "VALUES (?, 'raw', 'X', 0, ?)",
                (f"raw-{len(body)}", body),
            )
    elif isinstance(backend, RedisBackend):
        await backend.count()  # opened: its keys are known
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            await client.xadd(backend.keys.stream_of("raw"), {"e": body, "t": "raw"})
        finally:
            await client.aclose()
    else:
        assert isinstance(backend, PostgresBackend)
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            await conn.execute(
                f"INSERT INTO {backend.schema}.omniq_events "
                "(event_id, task_id, event_type, timestamp, part, body) "
                "VALUES (%s, 'raw', 'X', now(), %s, %s)",
                (f"raw-{len(body)}", partition_of("raw"), body.decode()),
            )


async def leftovers(backend: BaseEventStorage, group: str) -> int:
    """Events after the group's position (PostgreSQL) or pending entries (Redis)."""
    if isinstance(backend, RedisBackend):
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            return sum([int((await client.xpending(stream, group))["pending"])
                        for stream in backend.keys.streams])
        finally:
            await client.aclose()
    if isinstance(backend, PostgresBackend):
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            cur = await conn.execute(
                f"SELECT count(*) FROM {backend.schema}.omniq_events WHERE id > (SELECT "
                f"min(position) FROM {backend.schema}.omniq_parts WHERE grp = %s)", (group,))
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])
    return 0


def undecodable_samples(registry: CollectorRegistry, processor: str) -> float | None:
    return registry.get_sample_value(
        "omniq_observe_undecodable_events_total", {"processor": processor}
    )


async def test_poison_entries_are_dead_lettered_counted_and_skipped(
    backend: BaseEventStorage,
) -> None:
    if isinstance(backend, MemoryBackend):
        # memory keeps events, not bytes: nothing undecodable can be in it, and the
        # too-deep event cannot even be made
        with pytest.raises(InvalidEventError, match="nested deeper than 64"):
            TaskEvent(task_id="deep", event_type="X", details={"a": _deep(70)})
        return
    first, second = make_events(5), make_events(5, start=5)
    await backend.append(first)
    await write_raw(backend, DEEP)
    await write_raw(backend, GARBAGE)
    await backend.append(second)
    registry = CollectorRegistry()
    processor = AsyncEventProcessor(backend, name="poisoned")
    processor.register_handler(PrometheusHandler(registry=registry))
    handled: list[TaskEvent] = []
    processor.register_handler(handled.append)

    assert await processor.process_events_once() == 10
    assert handled == first + second
    assert processor.stats.undecodable == 2
    assert processor.stats.processed == 10
    assert processor.stats.dead_lettered == 2
    assert undecodable_samples(registry, "poisoned") == 2
    assert processor.stats.lag_seconds() == 0.0
    assert await processor.process_events_once() == 0  # moved on for good
    assert await leftovers(backend, "poisoned") == 0

    dead = await backend.dead_letters("poisoned")
    assert [(d.handler, d.attempts, d.raw) for d in dead] == [
        ("(decode)", 0, DEEP),
        ("(decode)", 0, GARBAGE),
    ]
    assert "RecursionError" in dead[0].error
    assert "not valid JSON" in dead[1].error
    assert dead[0].event.event_type == "UNDECODABLE"
    assert dead[0].event.task_id == f"undecodable:{dead[0].position}"
    stored = await backend.read_after(None, 100)
    assert [type(s).__name__ for s in stored] == (
        ["StoredEvent"] * 5 + ["UndecodableEvent"] * 2 + ["StoredEvent"] * 5
    )
    assert [s.position for s in stored[5:7]] == [d.position for d in dead]
    page = await backend.query(limit=100)  # tools listing the log see the stand-ins too
    assert [type(s).__name__ for s in page.events] == [type(s).__name__ for s in stored]


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_one_rotted_sqlite_row_does_not_block_its_page(sqlite_backend: SQLiteBackend) -> None:
    events = make_events(2000)
    await sqlite_backend.append(events)
    stored = await sqlite_backend.read_after(None, 2000)
    rotted = stored[500].position
    with sqlite3.connect(sqlite_backend.path) as conn:
        conn.execute("UPDATE omniq_events SET body = ? WHERE position = ?", (b"\x00rot", rotted))
    page = await sqlite_backend.read_after(None, 1000)
    assert len(page) == 1000
    assert isinstance(page[500], UndecodableEvent)
    assert page[500].raw == b"\x00rot"
    assert [s.event for s in page[:500]] == events[:500]
    assert [s.event for s in page[501:]] == events[501:1000]

    processor = AsyncEventProcessor(sqlite_backend, name="pages")
    handled: list[TaskEvent] = []
    processor.register_handler(handled.append)
    assert await processor.process_events_once() == 1999
    assert handled == events[:500] + events[501:]
    assert processor.stats.undecodable == 1
    [dead] = await sqlite_backend.dead_letters("pages")
    assert (dead.position, dead.raw, dead.handler) == (rotted, b"\x00rot", "(decode)")
