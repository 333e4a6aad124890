"""PostgreSQL processor groups: task-routed partitions leased in the database.

* four processes of one group share 100,000 events with retries: each event handled once,
  every task's events in one process, and their Prometheus numbers add up to a single
  processor's exactly;
* a SIGKILLed member's partitions are taken over at once, a stopped one's once its lease
  expired: nothing lost, and only what it held unacknowledged handled again;
* members joining and leaving divide the partitions anew; idle members keep theirs;
* a store made by schema version 2 is migrated: partitions computed, positions kept.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest
from _groups import (
    Workers,
    caught_up_with,
    check_group_results,
    queued,
    retry_workload,
    run_four_members,
    single_samples,
    storage_url,
)
from _helpers import POSTGRES_URL, async_wait_until, wait_until
from _server_backends import TestPostgresBackend, make_postgres, unique_name

from omniq_observe.backend import Consumer
from omniq_observe.backend._partitions import PARTITIONS, partition_of
from omniq_observe.backend.postgres import PostgresBackend
from omniq_observe.backend.postgres._schema import migrations
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.models.event import TaskEvent, encode_event


async def _holders(storage: PostgresBackend, group: str) -> dict[str | None, list[int]]:
    """The partitions of ``group`` per member holding them (``None``: free)."""
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        cur = await conn.execute(
            f"SELECT member, part FROM {storage.schema}.omniq_parts WHERE grp = %s "
            "ORDER BY part", (group,))
        held: defaultdict[str | None, list[int]] = defaultdict(list)
        for member, part in await cur.fetchall():
            held[member].append(part)
    return dict(held)


async def _spread(storage: PostgresBackend, group: str, members: int) -> bool:
    held = await _holders(storage, group)
    return None not in held and sorted(map(len, held.values())) == [
        PARTITIONS // members] * members


async def test_four_processes_share_100k_events_with_retries_exactly(tmp_path: Path) -> None:
    storage = make_postgres()
    events = retry_workload(25_000)
    assert len(events) == 100_002  # 25,000 tasks, 8,334 of them retried
    workers = Workers(tmp_path, storage_url(storage), "scale")
    try:
        await storage.health()  # the schema exists before the members start
        results, positions = await run_four_members(
            storage, workers, events, lambda: _spread(storage, "scale", 4))
        single = await single_samples(storage, len(events))
    finally:
        workers.kill_all()
        await storage.close()
    assert positions == sorted(positions)  # the group's position never went back
    check_group_results(results, events, single)


@pytest.mark.parametrize(("lease", "stop"), [(3600.0, signal.SIGKILL), (1.0, signal.SIGSTOP)])
async def test_a_dead_member_partitions_are_taken_over_nothing_lost(
    tmp_path: Path, lease: float, stop: signal.Signals
) -> None:
    """Killed, its process gone from this machine: at once, even with an hour's lease.
    Stopped (as a hung machine would be): once its lease (here 1 s) expired."""
    storage = make_postgres(lease_seconds=lease)
    workers = Workers(tmp_path, storage_url(storage), "group")
    flag = tmp_path / "go"  # created after the kill: the member that gets ``hold0`` blocks
    events = queued(200, prefix="x") + queued(1, prefix="hold") + queued(200, prefix="y")
    try:
        await storage.health()
        for member in ("a", "b"):
            workers.start(member, "--hold", str(flag), "--batch-size", "20")
        workers.wait_ready()
        await async_wait_until(lambda: _spread(storage, "group", 2), timeout=30,
                               what="two members holding eight partitions each")
        holders = await _holders(storage, "group")
        killed = next(m for m, parts in holders.items() if partition_of("hold0") in parts)
        survivor = "b" if killed == "a" else "a"
        await storage.append(events)
        wait_until(lambda: Path(f"{workers.out(killed)}.holding").exists(), timeout=30,
                   what=f"{killed} holding hold0")
        workers.procs[killed].send_signal(stop)
        if stop == signal.SIGKILL:
            assert workers.procs[killed].wait() == -9  # gone (not a zombie)
        before_kill = workers.handled_log(killed)
        flag.touch()  # the survivor passes ``hold0`` when it gets there
        await async_wait_until(lambda: caught_up_with(storage, "group"), timeout=30,
                               what="the survivor took the partitions over")
        assert await _holders(storage, "group") == {survivor: list(range(PARTITIONS))}
        workers.procs[killed].kill()
        workers.procs[killed].wait()
        assert workers.handled_log(killed) == before_kill
        results = workers.stop()
    finally:
        workers.kill_all()
        await storage.close()
    handled = results[survivor]["handled"]
    assert set(handled) | set(before_kill) == {e.event_id for e in events}  # nothing lost
    assert len(handled) == len(set(handled))
    # Handled twice: only what the killed member handled in its last, unacknowledged batch.
    assert len(set(handled) & set(before_kill)) < 20
    mine = set(holders[killed])
    assert {partition_of(e.task_id) for e in events if e.event_id in before_kill} <= mine


async def test_members_joining_and_leaving_divide_the_partitions_anew() -> None:
    first = make_postgres(lease_seconds=3600.0)
    second = PostgresBackend(POSTGRES_URL, schema=first.schema, lease_seconds=3600.0)
    a, b = Consumer("g", "a"), Consumer("g", "b")
    try:
        await first.append(queued(100, prefix="one"))
        batch = await first.claim(a, 1000)
        assert len(batch) == 100  # alone: every partition
        await first.ack(a, batch)
        assert await second.claim(b, 1000) == []  # joined: a still holds everything
        assert await first.claim(a, 1000) == []  # a gives b's half up ...
        assert await _holders(first, "g") == {"a": list(range(0, PARTITIONS, 2)),
                                              None: list(range(1, PARTITIONS, 2))}
        assert await second.claim(b, 1000) == []  # ... and b takes it
        assert await _holders(first, "g") == {"a": list(range(0, PARTITIONS, 2)),
                                              "b": list(range(1, PARTITIONS, 2))}
        await first.append(queued(100, prefix="two"))
        got_a, got_b = await first.claim(a, 1000), await second.claim(b, 1000)
        assert {partition_of(s.event.task_id) % 2 for s in got_a} == {0}
        assert {partition_of(s.event.task_id) % 2 for s in got_b} == {1}
        assert len(got_a) + len(got_b) == 100
        await first.ack(a, got_a)
        await second.ack(b, got_b)
        assert await first.get_position("g") == await first.last_position()
        await second.release(b)  # b leaves: a takes every partition at its next claim
        await first.append(queued(10, prefix="three"))
        assert len(await first.claim(a, 1000)) == 10
        assert await _holders(first, "g") == {"a": list(range(PARTITIONS))}
    finally:
        await second.close()
        await first.close()


async def test_a_version_2_store_is_migrated_with_partitions_and_positions() -> None:
    schema = unique_name("pg")
    old = [TaskEvent(task_id=f"t{i % 7}", event_type="ENQUEUED", details={"i": i})
           for i in range(40)] + [TaskEvent(task_id="nul\x00", event_type="STARTED")]
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as admin:
        await admin.execute(f"CREATE SCHEMA {schema}")
        for version in (1, 2):
            for statement in migrations(schema)[version]:
                assert isinstance(statement, str)
                await admin.execute(statement)
        await admin.execute(f"CREATE TABLE {schema}.omniq_meta (key text PRIMARY KEY, value text)")
        await admin.execute(f"INSERT INTO {schema}.omniq_meta VALUES ('schema_version', '2')")
        for e in old:  # as version 2 stored them
            await admin.execute(
                f"INSERT INTO {schema}.omniq_events (event_id, task_id, event_type, timestamp, "
                "body) VALUES (%s, %s, %s, %s, %s)",
                (e.event_id, e.task_id.replace("\x00", "\ufffd"), e.event_type, e.timestamp,
                 encode_event(e).decode()))
        # Group "done" handled 30 events; group "busy" 10, and holds a lease on 10 more.
        await admin.execute(f"INSERT INTO {schema}.omniq_positions (grp, delivered) "
                            "VALUES ('done', 30), ('busy', 20)")
        await admin.execute(f"INSERT INTO {schema}.omniq_leases VALUES "
                            "('busy', 10, 20, 'gone', now())")
    storage = TestPostgresBackend(POSTGRES_URL, schema=schema)
    try:
        assert (await storage.health()).schema_version == 3
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as c:
            cur = await c.execute(f"SELECT event_id, part FROM {schema}.omniq_events")
            parts = dict(await cur.fetchall())
        assert parts == {e.event_id: partition_of(e.task_id) for e in old}
        assert await storage.positions() == {"done": 30, "busy": 10}
        seen: list[TaskEvent] = []
        for group in ("done", "busy"):
            processor = AsyncEventProcessor(storage, group)
            processor.register_handler(seen.append)
            await processor.process_events_once()
        assert seen == old[30:] + old[10:]
        assert await storage.positions() == {"done": 41, "busy": 41}
        await storage.append(old)  # still idempotent
        assert await storage.count() == 41
    finally:
        await storage.close()


async def test_idle_members_renew_their_leases_and_keep_their_partitions() -> None:
    """Members waiting for events (far longer than their lease) renew it as they wait: no
    partition changes hands while nothing happens."""
    lease = 0.6
    first = make_postgres(lease_seconds=lease)
    second = PostgresBackend(POSTGRES_URL, schema=first.schema, lease_seconds=lease)
    processors = [AsyncEventProcessor(storage, "idle", member=name, idle_timeout=30.0)
                  for storage, name in ((first, "a"), (second, "b"))]
    await first.health()  # the schema exists before the members start
    runs = [asyncio.ensure_future(p.start()) for p in processors]
    try:
        await async_wait_until(lambda: _spread(first, "idle", 2), timeout=30,
                               what="two members holding eight partitions each")
        spread = await _holders(first, "idle")
        deadline = time.monotonic() + 4 * lease
        while time.monotonic() < deadline:  # watch them for four leases
            assert await _holders(first, "idle") == spread
            await asyncio.sleep(0.05)
        await first.append(queued(40))
        await async_wait_until(lambda: caught_up_with(first, "idle"), timeout=10)
        assert await _holders(first, "idle") == spread
        assert [p.stats.processed for p in processors] == [
            sum(partition_of(f"t{i}") in spread[name] for i in range(40)) for name in "ab"]
    finally:
        for p in processors:
            await p.stop()
        await asyncio.gather(*runs)
        await second.close()
        await first.close()
