"""Distributed-storage benchmarks: Redis Streams and PostgreSQL, writing and processing.

Each row's raw baseline is what a user would hand-write with the same client library,
measured in the same run, on the same server:

* Redis ``log_event`` (AsyncEventLogger, 64 concurrent callers): redis-py ``XADD`` of the
  same encoded events, pipelined 64 at a time (bodies encoded before the clock starts). The
  backend also maintains the per-task history index (RPUSH + PEXPIRE per event);
* Redis processing (AsyncEventProcessor, no-op handler, batches of 1000): redis-py
  ``XREADGROUP`` of 1000 entries, ``msgspec`` decode, the no-op handler, ``XACK``;
* Redis processing with hiredis (the ``redis`` extra installs it) against the same
  processor whose connections use redis-py's pure-Python reply parser;
* PostgreSQL ``log_event`` (64 concurrent callers): psycopg ``COPY ... write_row`` of the
  same rows, 64 rows per transaction (rows built before the clock starts);
* PostgreSQL processing: psycopg ``SELECT`` of the same rows by id in pages of 1000, each
  turned into a ``TaskEvent``, the no-op handler, the cursor kept in a table per page.

Run: ``python bench/run.py --only redis`` / ``--only postgres`` (or this file). Needs Redis
on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (``OMNIQ_TEST_REDIS_URL`` /
``OMNIQ_TEST_POSTGRES_URL``).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec
import psycopg
import redis.asyncio as aioredis
from _harness import Bench
from redis._parsers import _AsyncRESP2Parser

from omniq_observe.backend import BaseEventStorage
from omniq_observe.backend.postgres import PostgresBackend
from omniq_observe.backend.redis import RedisBackend
from omniq_observe.events import AsyncEventLogger, AsyncEventProcessor
from omniq_observe.models.event import TaskEvent, decode_event, encode_event

REDIS_URL = os.environ.get("OMNIQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("OMNIQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CONCURRENCY = 64
PAGE = 1000
_prefixes: list[str] = []
_schemas: list[str] = []


def make_events(n: int) -> list[TaskEvent]:
    """``n`` typical events: lifecycle types of n/3 tasks, with small details."""
    types = ("ENQUEUED", "STARTED", "COMPLETED")
    return [
        TaskEvent(task_id=f"task-{i // 3}", event_type=types[i % 3],
                  details={"queue_name": "emails", "worker_id": "w-1", "attempt": 1})
        for i in range(n)
    ]


def _name(kind: str) -> str:
    name = f"omniq_bench_{kind}_{uuid.uuid4().hex[:10]}"
    (_prefixes if kind == "redis" else _schemas).append(name)
    return name


def new_redis() -> RedisBackend:
    return RedisBackend(REDIS_URL, prefix=_name("redis"))


def new_redis_pure_parser() -> RedisBackend:
    """A Redis backend whose connections parse replies in Python, as without hiredis."""
    storage = new_redis()
    pool = storage.client().connection_pool
    pool.connection_kwargs["parser_class"] = _AsyncRESP2Parser
    return storage


def new_postgres() -> PostgresBackend:
    return PostgresBackend(POSTGRES_URL, schema=_name("pg"))


async def _log_concurrently(storage: BaseEventStorage, events: list[TaskEvent]) -> float:
    logger = AsyncEventLogger(storage)
    await storage.health()  # connect and migrate before the clock starts
    chunks = [events[i::CONCURRENCY] for i in range(CONCURRENCY)]

    async def worker(chunk: list[TaskEvent]) -> None:
        for event in chunk:
            await logger.log_event(event)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in chunks))
    elapsed = time.perf_counter() - start
    await storage.close()
    return elapsed


def log_event_run(make: Callable[[], BaseEventStorage]) -> Callable[[int], float]:
    def run(n: int) -> float:
        return asyncio.run(_log_concurrently(make(), make_events(n)))

    return run


def _noop(event: TaskEvent) -> None:
    return None


def processor_run(make: Callable[[], BaseEventStorage]) -> Callable[[int], float]:
    def run(n: int) -> float:
        async def process() -> float:
            storage = make()
            await storage.append(make_events(n))
            processor = AsyncEventProcessor(storage, "bench", batch_size=PAGE)
            processor.register_handler(_noop)
            start = time.perf_counter()
            handled = await processor.process_events_once()
            elapsed = time.perf_counter() - start
            assert handled == n, handled
            await storage.close()
            return elapsed

        return asyncio.run(process())

    return run


# -- raw baselines ----------------------------------------------------------------------
def redis_xadd_baseline(n: int) -> float:
    async def write() -> float:
        client = aioredis.Redis.from_url(REDIS_URL)
        stream = f"{_name('redis')}:events"
        bodies = [encode_event(e) for e in make_events(n)]
        await client.ping()
        start = time.perf_counter()
        for i in range(0, n, CONCURRENCY):
            pipe = client.pipeline(transaction=False)
            for body in bodies[i : i + CONCURRENCY]:
                pipe.xadd(stream, {"e": body})
            await pipe.execute()
        elapsed = time.perf_counter() - start
        await client.aclose()
        return elapsed

    return asyncio.run(write())


def redis_xreadgroup_baseline(n: int) -> float:
    async def read() -> float:
        client = aioredis.Redis.from_url(REDIS_URL)
        stream = f"{_name('redis')}:events"
        pipe = client.pipeline(transaction=False)
        for event in make_events(n):
            pipe.xadd(stream, {"e": encode_event(event)})
        await pipe.execute()
        await client.xgroup_create(stream, "bench", "0")
        start = time.perf_counter()
        while True:
            reply = await client.xreadgroup("bench", "m", {stream: ">"}, count=PAGE)
            if not reply or not reply[0][1]:
                break
            entries = reply[0][1]
            for _, fields in entries:
                _noop(decode_event(fields[b"e"]))
            await client.xack(stream, "bench", *[entry_id for entry_id, _ in entries])
        elapsed = time.perf_counter() - start
        await client.aclose()
        return elapsed

    return asyncio.run(read())


_RAW_TABLE = """CREATE TABLE {s}.events (id bigserial PRIMARY KEY, event_id text, task_id text,
    event_type text, timestamp timestamptz, details jsonb, trace_context jsonb);
    CREATE INDEX ON {s}.events (task_id, id); CREATE INDEX ON {s}.events (event_type, id);
    CREATE INDEX ON {s}.events (timestamp);
    CREATE TABLE {s}.cursor (grp text PRIMARY KEY, position bigint)"""


async def _raw_schema(conn: psycopg.AsyncConnection) -> str:
    schema = _name("pg")
    await conn.execute(f"CREATE SCHEMA {schema}")
    for statement in _RAW_TABLE.format(s=schema).split(";"):
        await conn.execute(statement)
    return schema


def _pg_rows(events: list[TaskEvent]) -> list[tuple[object, ...]]:
    enc = msgspec.json.encode
    return [(e.event_id, e.task_id, e.event_type, e.timestamp, enc(e.details).decode(),
             enc(e.trace_context).decode()) for e in events]


async def _copy(conn: psycopg.AsyncConnection, schema: str, rows: list[tuple[object, ...]]) -> None:
    cur = conn.cursor()
    sql = (f"COPY {schema}.events (event_id, task_id, event_type, timestamp, details, "
           "trace_context) FROM STDIN")
    for i in range(0, len(rows), CONCURRENCY):
        async with conn.transaction(), cur.copy(sql) as copy:
            for row in rows[i : i + CONCURRENCY]:
                await copy.write_row(row)


def pg_copy_baseline(n: int) -> float:
    async def write() -> float:
        conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)
        schema = await _raw_schema(conn)
        rows = _pg_rows(make_events(n))
        start = time.perf_counter()
        await _copy(conn, schema, rows)
        elapsed = time.perf_counter() - start
        await conn.close()
        return elapsed

    return asyncio.run(write())


def pg_select_baseline(n: int) -> float:
    async def read() -> float:
        conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)
        schema = await _raw_schema(conn)
        await _copy(conn, schema, _pg_rows(make_events(n)))
        start = time.perf_counter()
        position = 0
        while True:
            cur = await conn.execute(
                f"SELECT id, task_id, event_type, timestamp, details, event_id, trace_context "
                f"FROM {schema}.events WHERE id > %s ORDER BY id LIMIT %s", (position, PAGE))
            rows = await cur.fetchall()
            if not rows:
                break
            for _, task_id, event_type, ts, details, event_id, context in rows:
                _noop(TaskEvent(task_id=task_id, event_type=event_type, timestamp=ts,
                                details=details, event_id=event_id, trace_context=context))
            position = rows[-1][0]
            await conn.execute(
                f"INSERT INTO {schema}.cursor VALUES ('bench', %s) ON CONFLICT (grp) "
                "DO UPDATE SET position = excluded.position", (position,))
        elapsed = time.perf_counter() - start
        await conn.close()
        return elapsed

    return asyncio.run(read())


def _cleanup() -> None:
    async def clean() -> None:
        if _prefixes:
            client = aioredis.Redis.from_url(REDIS_URL)
            for prefix in _prefixes:
                keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
                for i in range(0, len(keys), 1000):
                    await client.delete(*keys[i : i + 1000])
            await client.aclose()
        if _schemas:
            async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as c:
                for schema in _schemas:
                    await c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    asyncio.run(clean())


atexit.register(_cleanup)


def benchmarks() -> list[Bench]:
    """The distributed rows: log_event and processing on Redis and PostgreSQL."""
    return [
        Bench("redis log_event x64", 20_000, log_event_run(new_redis), redis_xadd_baseline,
              "redis-py XADD, pipelines of 64", target_ratio=0.5),
        Bench("redis processor", 20_000, processor_run(new_redis), redis_xreadgroup_baseline,
              "XREADGROUP 1000 + decode + XACK", target_ratio=0.5),
        Bench("redis processor: hiredis vs pure-Python parser", 20_000,
              processor_run(new_redis), processor_run(new_redis_pure_parser),
              "the same processor, redis-py's Python parser"),
        Bench("postgres log_event x64", 20_000, log_event_run(new_postgres), pg_copy_baseline,
              "psycopg COPY write_row, 64 rows/tx", target_ratio=0.5),
        Bench("postgres processor", 20_000, processor_run(new_postgres), pg_select_baseline,
              "SELECT 1000 by id + TaskEvent + cursor", target_ratio=0.5),
    ]


if __name__ == "__main__":
    from _harness import run_bench

    for bench in benchmarks():
        result = run_bench(bench)
        print(f"{bench.name}: {result.rate:,.0f}/s, raw {result.baseline_rate or 0:,.0f}/s, "
              f"ratio {result.ratio or 0:.2f}")
