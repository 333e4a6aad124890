"""PostgresBackend specifics on the real PostgreSQL (the shared contract is
test_backend_contract)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import psycopg
import pytest
from _helpers import POSTGRES_URL, async_wait_until
from _server_backends import TestPostgresBackend, make_postgres, unique_name

from omniq_observe.backend import Consumer, DeadLetter, from_url
from omniq_observe.backend.postgres import PostgresBackend
from omniq_observe.backend.postgres._schema import migrations
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exceptions import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidEventError,
    InvalidURLError,
    StorageError,
)
from omniq_observe.models.event import TaskEvent, encode_event


@pytest.fixture
async def pg() -> AsyncIterator[TestPostgresBackend]:
    storage = make_postgres(lease_seconds=0.3)
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
async def admin() -> AsyncIterator[psycopg.AsyncConnection]:
    conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


def _events(n: int, task: str = "t") -> list[TaskEvent]:
    return [TaskEvent(task_id=f"{task}{i % 3}", event_type="ENQUEUED",
                      details={"queue_name": "q", "i": i}) for i in range(n)]


async def test_from_url_takes_our_parameters_and_keeps_libpq_ones() -> None:
    storage = from_url("postgres://u@db:5433/x?schema=obs&lease_seconds=9&sslmode=disable")
    assert isinstance(storage, PostgresBackend)
    assert (storage.schema, storage.lease_seconds) == ("obs", 9.0)
    assert storage.dsn == "postgresql://u@db:5433/x?sslmode=disable"
    with pytest.raises(InvalidURLError, match="pool_size='x' is not a valid int"):
        from_url("postgresql://u@db/x?pool_size=x")
    with pytest.raises(ConfigurationError, match="schema must be a plain identifier"):
        PostgresBackend(schema="bad; DROP TABLE x")


@pytest.mark.parametrize(
    ("setting", "value", "wanted"),
    [
        ("lease_seconds", 0, "a positive number of seconds"),
        ("lease_seconds", float("nan"), "a positive number of seconds"),
        ("connect_timeout", True, "a positive number of seconds"),
        ("connect_timeout", -1.5, "a positive number of seconds"),
        ("pool_size", 0, "a positive integer"),
        ("pool_size", True, "a positive integer"),
        ("retries", -1, "a non-negative integer"),
        ("retries", False, "a non-negative integer"),
        ("max_batch", 0, "a positive integer"),
    ],
)
def test_bad_numeric_settings_name_the_setting_and_value(
    setting: str, value: object, wanted: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        PostgresBackend(**{setting: value})  # type: ignore[arg-type]
    assert (info.value.setting, repr(info.value.value)) == (setting, repr(value))
    assert str(info.value) == f"{setting} must be {wanted}, got {value!r}"


async def test_schema_is_created_once_with_its_version_and_columns(
    admin: psycopg.AsyncConnection,
) -> None:
    schema = unique_name("pg")
    # Three processes' worth of backends start on a fresh schema at the same moment.
    backends = [TestPostgresBackend(POSTGRES_URL, schema=schema) for _ in range(3)]
    try:
        healths = await asyncio.gather(*(b.health() for b in backends))
        assert [h.schema_version for h in healths] == [3, 3, 3]
        cur = await admin.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'omniq_events' ORDER BY ordinal_position",
            (schema,),
        )
        assert await cur.fetchall() == [
            ("id", "bigint"), ("event_id", "text"), ("task_id", "text"),
            ("event_type", "text"), ("timestamp", "timestamp with time zone"),
            ("body", "text"), ("part", "smallint"),
        ]
        cur = await admin.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s "
            "AND tablename = 'omniq_events' ORDER BY indexname", (schema,))
        assert [r[0] for r in await cur.fetchall()] == [
            "omniq_events_event_id", "omniq_events_pkey", "omniq_events_task",
            "omniq_events_time", "omniq_events_type"]
    finally:
        for b in backends[1:]:
            b._closed = True  # only the first drops the schema
            await PostgresBackend.close(b)
        await backends[0].close()


async def test_the_wire_form_is_kept_as_text_and_nul_characters_round_trip(
    pg: TestPostgresBackend, admin: psycopg.AsyncConnection
) -> None:
    tricky = TaskEvent(task_id="t\x00", event_type="FAILED",
                       details={"queue_name": "q", "error": "a\x00b\\u0000", "tab": "\t",
                                "big": 1e20, "neg": -0.0, "z": 1, "a": 2},
                       trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    await pg.append([*_events(2), tricky])
    assert [s.event for s in await pg.read_after(None, 10)][2] == tricky
    assert await pg.task_history("t\x00") == [tricky]
    cur = await admin.execute(
        f"SELECT task_id, body FROM {pg.schema}.omniq_events WHERE event_type = 'FAILED'")
    assert await cur.fetchone() == ("t\ufffd", encode_event(tricky).decode())
    # Its dead letter is kept too (jsonb cannot hold \u0000; the event is kept as text).
    position = (await pg.read_after(None, 10))[2].position
    dead = DeadLetter("g", "h", "ValueError: NUL", 3, tricky, position)
    await pg.record_dead_letter(dead)
    assert await pg.dead_letters("g") == [dead]


async def test_a_version_1_schema_is_migrated_keeping_events_and_dropping_copies(
    admin: psycopg.AsyncConnection,
) -> None:
    schema = unique_name("pg")
    await admin.execute(f"CREATE SCHEMA {schema}")
    for statement in migrations(schema)[1]:
        await admin.execute(statement)
    await admin.execute(f"CREATE TABLE {schema}.omniq_meta (key text PRIMARY KEY, value text)")
    await admin.execute(f"INSERT INTO {schema}.omniq_meta VALUES ('schema_version', '1')")
    old = TaskEvent(task_id="old", event_type="ENQUEUED", details={"queue_name": "q", "n": 1})
    for _ in range(2):  # the same event stored twice, as a lost reply did before version 2
        await admin.execute(
            f"INSERT INTO {schema}.omniq_events (event_id, task_id, event_type, timestamp, "
            "details) VALUES (%s, %s, %s, %s, %s::jsonb)",
            (old.event_id, old.task_id, old.event_type, old.timestamp, '{"queue_name":"q","n":1}'))
    await admin.execute(
        f"INSERT INTO {schema}.omniq_dead_letters (grp, handler, error, attempts, position, "
        "event) VALUES ('g', 'h', 'boom', 1, 1, %s::jsonb)", (encode_event(old).decode(),))
    storage = TestPostgresBackend(POSTGRES_URL, schema=schema)
    try:
        assert (await storage.health()).schema_version == 3
        assert [s.event for s in await storage.read_after(None, 10)] == [old]
        assert [d.event for d in await storage.dead_letters()] == [old]
        await storage.append([old])  # and now it is idempotent
        assert await storage.count() == 1
    finally:
        await storage.close()


async def test_an_append_repeated_after_a_lost_reply_stores_each_event_once(
    pg: TestPostgresBackend,
) -> None:
    events = _events(5)
    await pg.append(events[:3])
    await pg.append(events)  # the retry of a write that had committed, plus new events
    await pg.append([events[4], events[4]])  # a repeat inside one batch
    stored = await pg.read_after(None, 10)
    assert [s.event for s in stored] == events
    assert await pg.count() == 5


async def test_a_task_id_too_long_for_its_index_is_an_invalid_event_at_once(
    pg: TestPostgresBackend, admin: psycopg.AsyncConnection
) -> None:
    """btree rows are limited to about 2.7 kB: PostgreSQL says ProgramLimitExceeded. That is
    the event's fault, so no retry and no "connection lost" (the logger would buffer it)."""
    event = TaskEvent(task_id="t", event_type="STARTED")
    long_id = "".join(f"{i:04x}" for i in range(1000))  # incompressible, 4,000 characters
    msgspec.structs.force_setattr(event, "task_id", long_id)  # past the model's own limit
    app = unique_name("app")
    storage = make_postgres(query=f"?application_name={app}")
    try:
        await storage.append(_events(1))  # connect first
        before = await _backend_starts(admin, app)
        with pytest.raises(InvalidEventError, match="cannot store task_id=") as caught:
            await storage.append([event])
        assert caught.value.field == "task_id"
        assert caught.value.value == long_id
        assert isinstance(caught.value.__cause__, psycopg.errors.ProgramLimitExceeded)
        assert await _backend_starts(admin, app) == before  # not retried on new connections
        await storage.append(_events(1, task="after"))  # the backend goes on
        assert await storage.count() == 2
    finally:
        await storage.close()


async def _backend_starts(admin: psycopg.AsyncConnection, app: str) -> list[int]:
    cur = await admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid", (app,))
    return [pid for (pid,) in await cur.fetchall()]


async def test_a_serialization_failure_is_retried_and_other_errors_are_not() -> None:
    storage = make_postgres(retries=2)
    calls: list[str] = []

    async def conflicting(conn: psycopg.AsyncConnection) -> str:
        calls.append("try")
        if len(calls) < 3:
            await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' "
                               "USING ERRCODE = 'serialization_failure'; END $$")
        return "done"

    async def broken(conn: psycopg.AsyncConnection) -> None:
        calls.append("broken")
        await conn.execute("SELECT 1/0")

    try:
        await storage.health()
        assert await storage._db.run("testing", conflicting) == "done"
        assert calls == ["try", "try", "try"]
        with pytest.raises(StorageError, match="division by zero") as caught:
            await storage._db.run("dividing", broken)
        assert not isinstance(caught.value, BackendUnavailableError)
        assert calls[3:] == ["broken"]
        calls.clear()

        async def always_conflicting(conn: psycopg.AsyncConnection) -> str:
            calls.clear()  # so that every try conflicts
            return await conflicting(conn)

        with pytest.raises(BackendUnavailableError, match="serialization failure while"):
            await storage._db.run("testing", always_conflicting)
    finally:
        await storage.close()


async def test_concurrent_writers_commit_ids_in_order_so_no_reader_skips_one(
    pg: TestPostgresBackend,
) -> None:
    """bigserial ids are drawn before commit: writer 1 draws id N, writer 2 draws N+1 and
    commits first; a reader at "id > last" would then pass N for good. The backend orders
    writers, so writer 2 waits until writer 1 committed."""
    await pg.append(_events(1, task="first"))
    start = await pg.last_position()
    consumer = Consumer("g", "m")
    await pg.commit_position("g", start)
    writer1 = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)
    writer2 = PostgresBackend(POSTGRES_URL, schema=pg.schema)
    e1 = TaskEvent(task_id="w1", event_type="ENQUEUED")
    e2 = TaskEvent(task_id="w2", event_type="ENQUEUED")
    try:
        async with writer1.transaction():
            await pg._insert(writer1, [e1], own_transaction=False)  # drawn an id, not committed
            second = asyncio.ensure_future(writer2.append([e2]))
            done, _ = await asyncio.wait({second}, timeout=0.5)
            assert not done  # held back until writer 1 commits
            assert await pg.read_after(start, 10) == []
            assert await pg.claim(consumer, 10) == []
        await second
        claimed = await pg.claim(consumer, 10)
    finally:
        await writer1.close()
        await writer2.close()
    assert [s.event for s in claimed] == [e1, e2]
    assert claimed[0].position < claimed[1].position


async def test_two_members_share_and_an_expired_lease_is_taken_over(
    pg: TestPostgresBackend,
) -> None:
    await pg.append(_events(30))
    a, b = Consumer("g", "a"), Consumer("g", "b")
    first = await pg.claim(a, 10)  # alone: a holds every partition
    assert len(first) == 10
    assert await pg.claim(b, 10) == []  # b joined, but a holds them until its lease expired
    # a never comes back; after lease_seconds, b takes its partitions (and batch) over.
    taken = await async_wait_until(lambda: pg.claim(b, 10), timeout=5)
    assert [s.position for s in taken] == [s.position for s in first]
    await pg.ack(a, first)  # too late: the partitions are b's now, a's ack changes nothing
    assert await pg.get_position("g") is None
    await pg.ack(b, taken)
    assert await pg.get_position("g") == taken[-1].position
    assert await pg.positions() == {"g": taken[-1].position}


async def test_release_hands_a_lease_over_at_once() -> None:
    storage = make_postgres(lease_seconds=3600.0)
    try:
        await storage.append(_events(4))
        leaving, staying = Consumer("g", "leaving"), Consumer("g", "staying")
        held = await storage.claim(leaving, 4)
        await storage.release(leaving)
        assert [s.position for s in await storage.claim(staying, 4)] == [
            s.position for s in held]
    finally:
        await storage.close()


async def test_notify_wakes_a_waiting_processor_even_after_its_listener_was_killed(
    pg: TestPostgresBackend, admin: psycopg.AsyncConnection
) -> None:
    processor = AsyncEventProcessor(pg, "wake", idle_timeout=5.0)
    arrived: list[float] = []
    processor.register_handler(lambda e: arrived.append(time.monotonic()))
    runner = asyncio.ensure_future(processor.start())
    latencies = []
    try:
        for n in range(1, 6):
            await async_wait_until(
                lambda: pg._listener is not None and pg._listener._ready.is_set()
            )
            if n == 3:  # kill the LISTEN connection: it reconnects and wakes waiters
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query = %s", (f"LISTEN {pg.channel}",))
            sent = time.monotonic()
            await pg.append(_events(1))
            await async_wait_until(lambda n=n: len(arrived) == n, timeout=4.0)
            latencies.append(arrived[-1] - sent)
    finally:
        await processor.stop()
        await runner
    assert max(latencies) < 1.0, latencies  # far below the 5 s idle timeout
