"""Redis and PostgreSQL under faults and at scale, with real servers and real processes.

* a Redis connection killed with CLIENT KILL, and PostgreSQL connections terminated with
  pg_terminate_backend, while a logger writes and a processor reads: nothing lost;
* a processor process SIGKILLed while it holds events: another member handles them;
* a server that stays down longer than the logger's retry buffer covers: the logger
  follows its policy and never stalls;
* four processor processes in one group share 100,000 events: each handled once.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from _groups import Workers, caught_up_with, queued, storage_url
from _helpers import POSTGRES_URL, REDIS_URL, async_wait_until, free_port, wait_until
from _server_backends import make_postgres, make_redis, unique_name

from omniq_observe.backend import BaseEventStorage
from omniq_observe.backend.postgres import PostgresBackend
from omniq_observe.backend.redis import RedisBackend
from omniq_observe.events import AsyncEventLogger, AsyncEventProcessor
from omniq_observe.exceptions import BackendUnavailableError, StorageError
from omniq_observe.models.event import TaskEvent

WORKER = Path(__file__).with_name("_worker_proc.py")
KINDS = ["redis", "postgres"]


@pytest.fixture(params=KINDS)
async def server_backend(request: pytest.FixtureRequest) -> AsyncIterator[BaseEventStorage]:
    factory = make_redis if request.param == "redis" else make_postgres
    storage = factory(claim_idle=1.0) if request.param == "redis" else factory(lease_seconds=1.0)
    try:
        yield storage
    finally:
        await storage.close()


# -- connection faults --------------------------------------------------------------------
async def _write_read_through(
    storage: BaseEventStorage, cut: Callable[[], Any], rounds: int = 5, per_round: int = 200
) -> None:
    """Log and process while ``cut()`` kills connections between rounds; nothing lost."""
    logger = AsyncEventLogger(storage)  # on_storage_error="raise": a lost write would raise
    processor = AsyncEventProcessor(storage, "through", batch_size=50, idle_timeout=0.2)
    seen: list[str] = []
    processor.register_handler(lambda e: seen.append(e.event_id))
    runner = asyncio.ensure_future(processor.start())
    written: list[str] = []
    try:
        for r in range(rounds):
            events = queued(per_round, prefix=f"r{r}-")
            for i in range(0, per_round, 10):
                await asyncio.gather(*(logger.log_event(e) for e in events[i : i + 10]))
            written += [e.event_id for e in events]
            await cut()
        await async_wait_until(lambda: len(set(seen)) == len(written), timeout=30,
                               what="every event handled")
    finally:
        await processor.stop()
        await runner
    assert await storage.count() == rounds * per_round
    assert set(seen) == set(written)
    assert logger.stats.logged == rounds * per_round


async def test_redis_client_kill_mid_stream_loses_nothing() -> None:
    name = unique_name("conn")
    storage = make_redis(client_name=name, claim_idle=1.0)
    admin = aioredis.Redis.from_url(REDIS_URL)
    kills: list[int] = []

    async def cut() -> None:
        clients = await admin.client_list()
        ours = [c for c in clients if c.get("name") == name]
        for c in ours:
            await admin.client_kill_filter(_id=c["id"])
        kills.append(len(ours))

    try:
        await _write_read_through(storage, cut)
    finally:
        await admin.aclose()
        await storage.close()
    assert len(kills) == 5 and all(kills), kills  # every round really killed connections


async def test_postgres_pg_terminate_backend_loses_nothing() -> None:
    app = unique_name("conn")
    storage = make_postgres(query=f"?application_name={app}", lease_seconds=1.0)
    admin = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)
    kills: list[int] = []

    async def cut() -> None:
        cur = await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        )
        kills.append(len(await cur.fetchall()))

    try:
        await _write_read_through(storage, cut)
    finally:
        await admin.close()
        await storage.close()
    assert len(kills) == 5 and all(kills), kills


async def _append_under_kills(
    storage: BaseEventStorage, kill: Callable[[], Any], total: int = 3000, min_kills: int = 3
) -> int:
    """Log events, 100 at a time concurrently, while ``kill()`` keeps cutting the backend's
    connections (some after a write committed, before its reply arrived), until at least
    ``total`` events were logged and ``min_kills`` connections were cut (on a loaded
    machine a kill can miss a busy connection, so the rounds go on until enough landed).
    Every ``log_event`` returns, and every event is stored exactly once. Returns the
    number of connections killed."""
    logger = AsyncEventLogger(storage)  # on_storage_error="raise": a lost write would raise
    await storage.health()  # connected (and migrated) before the faults begin
    done = asyncio.Event()
    kills = 0

    async def killer() -> None:
        nonlocal kills
        while not done.is_set():
            kills += await kill()
            with contextlib.suppress(asyncio.TimeoutError):  # paces the faults
                await asyncio.wait_for(done.wait(), 0.05)

    task = asyncio.ensure_future(killer())
    events: list[TaskEvent] = []
    deadline = time.monotonic() + 60
    try:
        while len(events) < total or (kills < min_kills and time.monotonic() < deadline):
            batch = queued(100, prefix=f"kill-{len(events)}-")
            await asyncio.gather(*(logger.log_event(e) for e in batch))
            events += batch
    finally:
        done.set()
        await task
    stored = [s.event.event_id for s in await storage.read_after(None, 2 * len(events))]
    assert len(stored) - len(set(stored)) == 0  # duplicates
    assert sorted(stored) == sorted(e.event_id for e in events)
    assert logger.stats.logged == len(events)
    return kills


async def test_redis_client_kill_during_appends_duplicates_nothing() -> None:
    name = unique_name("conn")
    storage = make_redis(client_name=name, retries=10)
    admin = aioredis.Redis.from_url(REDIS_URL)

    async def kill() -> int:
        clients = await admin.client_list()
        ours = [c for c in clients if c.get("name") == name]
        for c in ours:
            await admin.client_kill_filter(_id=c["id"])
        return len(ours)

    try:
        assert await _append_under_kills(storage, kill) >= 3
    finally:
        await admin.aclose()
        await storage.close()


async def test_postgres_pg_terminate_backend_during_appends_duplicates_nothing() -> None:
    app = unique_name("conn")
    storage = make_postgres(query=f"?application_name={app}", retries=10)
    admin = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)

    async def kill() -> int:  # only sessions in the middle of a transaction
        cur = await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND state <> 'idle'",
            (app,),
        )
        return len(await cur.fetchall())

    try:
        assert await _append_under_kills(storage, kill) >= 3
    finally:
        await admin.close()
        await storage.close()


# -- pairing across the members of a group -------------------------------------------------
async def test_a_member_pairs_an_end_with_a_start_another_member_handled(
    server_backend: BaseEventStorage,
) -> None:
    """What the pairing handlers rely on: the member that gets COMPLETED finds the task's
    STARTED (handled by another member, which left the group since) in task_history,
    complete and in order."""
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    enq = TaskEvent(task_id="job", event_type="ENQUEUED", timestamp=t0,
                    details={"queue_name": "q"})
    start = TaskEvent(task_id="job", event_type="STARTED", timestamp=t0 + timedelta(seconds=2))
    end = TaskEvent(task_id="job", event_type="COMPLETED", timestamp=t0 + timedelta(seconds=7))
    seen: dict[str, list[str]] = {"a": [], "b": []}
    durations: list[tuple[float, float]] = []

    def member(name: str) -> AsyncEventProcessor:
        processor = AsyncEventProcessor(server_backend, "pairs", member=name)

        async def handle(event: TaskEvent) -> None:
            seen[name].append(event.event_type)
            if event.event_type == "COMPLETED":
                history = await processor.event_storage.task_history(event.task_id)
                began = next(e for e in history if e.event_type == "STARTED")
                queued = next(e for e in history if e.event_type == "ENQUEUED")
                durations.append(((event.timestamp - began.timestamp).total_seconds(),
                                  (began.timestamp - queued.timestamp).total_seconds()))

        processor.register_handler(handle)
        return processor

    a, b = member("a"), member("b")
    await server_backend.append([enq, start])
    assert await a.process_events_once() == 2
    await server_backend.release(a.consumer)  # a leaves: the task goes to b
    await server_backend.append([end])
    assert await b.process_events_once() == 1
    assert seen == {"a": ["ENQUEUED", "STARTED"], "b": ["COMPLETED"]}
    assert durations == [(5.0, 2.0)]  # duration and queue wait, across members
    assert await server_backend.task_history("job") == [enq, start, end]


# -- a processor process killed while it holds events -------------------------------------
async def test_sigkilled_member_events_are_taken_over(
    server_backend: BaseEventStorage, tmp_path: Path
) -> None:
    workers = Workers(tmp_path, storage_url(server_backend), "group")
    flag = tmp_path / "release-hold"  # never created: the first worker blocks for good
    try:
        workers.start("a", "--hold", str(flag), "--batch-size", "20")
        workers.wait_ready()
        events = queued(10, prefix="before") + queued(1, prefix="hold") + queued(9)
        await server_backend.append(events)
        wait_until(lambda: Path(f"{workers.out('a')}.holding").exists(), timeout=30,
                   what="worker a holding events")
        held_by_a = set(workers.handled_log("a"))
        assert held_by_a == {e.event_id for e in events[:10]}  # handled, never acknowledged
        workers.procs["a"].kill()
        workers.procs["a"].wait()
        workers.start("b", "--batch-size", "20")
        workers.wait_ready("b")
        wait_until(lambda: len(workers.handled_log("b")) >= len(events), timeout=30,
                   what="worker b took the held events over")
        await async_wait_until(lambda: caught_up_with(server_backend, "group"), timeout=10)
        results = workers.stop()
    finally:
        workers.kill_all()
    # b handled the whole batch a held (at-least-once: a's first 10 again), and no more.
    assert sorted(results["b"]["handled"]) == sorted(e.event_id for e in events)


# -- a server down longer than the retry buffer covers ------------------------------------
@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    """A private redis-server on a free port that a test may kill and restart."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        ))
        wait_until(lambda: _answers(port), timeout=10, what="redis-server up")

    def stop() -> None:
        procs[-1].kill()
        procs[-1].wait()

    start()
    yield port, start, stop
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def test_redis_down_buffer_policy_drops_and_recovers(own_redis: Any) -> None:
    port, start, stop = own_redis
    storage = RedisBackend(f"redis://127.0.0.1:{port}/0", retries=1, connect_timeout=0.5)
    logger = AsyncEventLogger(storage, on_storage_error="buffer", buffer_size=50)
    try:
        await logger.log_events(queued(5, prefix="up"))
        stop()
        t0 = time.monotonic()
        for event in queued(200, prefix="down"):
            await asyncio.wait_for(logger.log_event(event), timeout=10)
        elapsed = time.monotonic() - t0
        assert logger.stats.dropped == 150
        assert logger.buffered == 50
        assert await logger.flush(timeout=0.2) is False  # still down: flush gives up in time
        start()
        assert await logger.flush(timeout=20) is True
        assert await storage.count() == 50  # the restarted server keeps nothing (no --save)
        assert logger.stats.logged == 55
        assert elapsed < 10  # 200 calls while down never stalled on the dead server
    finally:
        await logger.aclose()
        await storage.close()


async def test_redis_down_raise_policy_raises_in_bounded_time(own_redis: Any) -> None:
    port, _start, stop = own_redis
    storage = RedisBackend(f"redis://127.0.0.1:{port}/0", retries=2, connect_timeout=0.5)
    logger = AsyncEventLogger(storage)
    try:
        await logger.log_event(queued(1)[0])
        stop()
        with pytest.raises(BackendUnavailableError, match="unavailable while appending"):
            await asyncio.wait_for(logger.log_event(queued(1)[0]), timeout=10)
        assert logger.stats.storage_errors == 1
    finally:
        await storage.close()


async def test_postgres_down_policies(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/test"  # nobody listens there
    storage = PostgresBackend(dsn, schema=unique_name("down"), connect_timeout=0.5)
    raising = AsyncEventLogger(storage)
    buffering = AsyncEventLogger(storage, on_storage_error="buffer", buffer_size=20)
    try:
        with pytest.raises(StorageError, match="unreachable"):
            await asyncio.wait_for(raising.log_event(queued(1)[0]), timeout=10)
        for event in queued(50):
            await asyncio.wait_for(buffering.log_event(event), timeout=10)
        assert buffering.stats.dropped == 30
        assert buffering.buffered == 20
        assert (await storage.health()).ok is False
    finally:
        await buffering.aclose(timeout=0.1)
        await storage.close()
    assert buffering.stats.dropped == 50  # aclose gives up on the buffer, counted


# -- four processes share 100,000 events ---------------------------------------------------
def _workload() -> tuple[list[TaskEvent], int]:
    """100,000 events: 25,000 tasks run to an end (every 4th fails), 25,000 only queued.

    Tasks overlap as under real workers: a task's STARTED comes ~60 steps after its
    ENQUEUED and its end ~60 after that, so about a third of the tasks straddle a batch
    boundary and have their start and end handled by different processes (their pairing
    comes from ``task_history``). Returns the events and the number of STARTED/end pairs.
    """
    run, queued = 25_000, 25_000
    steps: list[tuple[int, int, TaskEvent]] = []
    for i in range(run):
        task = f"t{i}"
        end = ("FAILED", {"error": "boom", "error_type": "ValueError"}) if i % 4 == 0 else (
            "COMPLETED", {})
        steps.append((3 * i, 0, TaskEvent(task_id=task, event_type="ENQUEUED",
                                          details={"queue_name": "q"})))
        steps.append((3 * i + 60, 1, TaskEvent(task_id=task, event_type="STARTED",
                                               details={"worker_id": "w"})))
        steps.append((3 * i + 120, 2, TaskEvent(task_id=task, event_type=end[0],
                                                details=end[1])))
    for j in range(queued):
        steps.append((3 * j + 1, 3, TaskEvent(task_id=f"q{j}", event_type="ENQUEUED",
                                              details={"queue_name": "q"})))
    steps.sort(key=lambda step: (step[0], step[1]))
    return [event for _, _, event in steps], run


@pytest.mark.parametrize("kind", KINDS)
async def test_four_processes_share_100k_events(kind: str, tmp_path: Path) -> None:
    storage = make_redis() if kind == "redis" else make_postgres()
    events, pairs = _workload()
    workers = Workers(tmp_path, storage_url(storage), "scale")
    try:
        logger = AsyncEventLogger(storage)
        for i in range(0, len(events), 2000):
            await logger.log_events(events[i : i + 2000])
        assert await storage.count() == 100_000
        for n in range(4):
            workers.start(f"p{n}", "--batch-size", "500")
        workers.wait_ready()
        await async_wait_until(lambda: caught_up_with(storage, "scale"), timeout=120,
                               interval=0.2, what="the group caught up")
        results = workers.stop()
    finally:
        workers.kill_all()
        await storage.close()
    handled = [eid for r in results.values() for eid in r["handled"]]
    assert len(handled) == 100_000  # none handled twice ...
    assert set(handled) == {e.event_id for e in events}  # ... and every one handled
    types: Counter[str] = Counter()
    for r in results.values():
        types.update(r["types"])
    assert types == Counter(e.event_type for e in events)
    prometheus = [r["prometheus"] for r in results.values()]
    assert None not in prometheus  # every worker ran a PrometheusHandler
    # A member that joined after the others divided the partitions may have handled none.
    assert sum(p.get("omniq_task_events_total", 0) for p in prometheus) == 100_000
    # Every STARTED/end pair measured exactly once, wherever its two halves went.
    assert sum(p.get("omniq_task_duration_seconds_count", 0) for p in prometheus) == pairs
