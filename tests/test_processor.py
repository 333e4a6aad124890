"""AsyncEventProcessor: handlers, checkpoints, the run loop, failures, and a SIGKILL restart."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from _helpers import async_wait_until, wait_until

from omniq_observe.backend import BaseEventStorage, MemoryBackend, SQLiteBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import EventType, TaskEvent

HERE = Path(__file__).resolve().parent
TYPES = ("ENQUEUED", "STARTED", "COMPLETED")


def events(count: int, start: int = 0) -> list[TaskEvent]:
    return [
        TaskEvent(task_id=f"t{i // 3}", event_type=TYPES[i % 3], details={"seq": i})
        for i in range(start, start + count)
    ]


async def test_handlers_run_in_registration_order_sync_and_async(
    backend: BaseEventStorage,
) -> None:
    calls: list[tuple[str, int]] = []

    def first(event: TaskEvent) -> None:
        calls.append(("first", event.details["seq"]))

    async def second(event: TaskEvent) -> None:
        await asyncio.sleep(0)
        calls.append(("second", event.details["seq"]))

    class Third:
        async def __call__(self, event: TaskEvent) -> None:
            calls.append(("third", event.details["seq"]))

    processor = AsyncEventProcessor(event_storage=backend)
    processor.register_handler(first)
    processor.register_handler(second)
    processor.register_handler(Third())
    await backend.append(events(2))
    assert await processor.process_events_once() == 2
    assert calls == [
        ("first", 0), ("second", 0), ("third", 0), ("first", 1), ("second", 1), ("third", 1)
    ]
    assert processor.handler_names == [
        "test_handlers_run_in_registration_order_sync_and_async.<locals>.first",
        "test_handlers_run_in_registration_order_sync_and_async.<locals>.second",
        "Third",
    ]


async def test_event_types_filter(backend: BaseEventStorage) -> None:
    seen: dict[str, list[int]] = {"done": [], "start": [], "all": []}
    processor = AsyncEventProcessor(event_storage=backend)
    processor.register_handler(lambda e: seen["done"].append(e.details["seq"]), ["completed"])
    processor.register_handler(
        lambda e: seen["start"].append(e.details["seq"]), [EventType.STARTED, "ENQUEUED"]
    )
    processor.register_handler(lambda e: seen["all"].append(e.details["seq"]), None)
    await backend.append(events(6))
    assert await processor.process_events_once() == 6
    assert seen == {"done": [2, 5], "start": [0, 1, 3, 4], "all": [0, 1, 2, 3, 4, 5]}


async def test_process_events_once_commits_and_returns_the_count(
    backend: BaseEventStorage,
) -> None:
    handled: list[TaskEvent] = []
    processor = AsyncEventProcessor(event_storage=backend, batch_size=4)
    processor.register_handler(handled.append)
    batch = events(10)
    await backend.append(batch)
    assert await processor.process_events_once() == 10
    assert handled == batch
    assert await backend.get_position("default") == await backend.last_position()
    assert await processor.process_events_once() == 0
    assert processor.stats.processed == 10
    assert processor.stats.batches == 3
    assert processor.stats.caught_up is True
    assert processor.stats.lag_seconds() == 0.0


async def test_restarted_processor_resumes_after_its_checkpoint(
    backend: BaseEventStorage,
) -> None:
    first: list[int] = []
    processor = AsyncEventProcessor(event_storage=backend, name="billing")
    processor.register_handler(lambda e: first.append(e.details["seq"]))
    await backend.append(events(3))
    assert await processor.process_events_once() == 3
    await backend.append(events(2, start=3))
    again: list[int] = []
    restarted = AsyncEventProcessor(event_storage=backend, name="billing")
    restarted.register_handler(lambda e: again.append(e.details["seq"]))
    assert await restarted.process_events_once() == 2
    assert (first, again) == ([0, 1, 2], [3, 4])


async def test_two_names_each_see_every_event(backend: BaseEventStorage) -> None:
    seen: dict[str, list[int]] = {"a": [], "b": []}
    processors = {}
    for name in ("a", "b"):
        processor = AsyncEventProcessor(event_storage=backend, name=name)
        processor.register_handler(lambda e, n=name: seen[n].append(e.details["seq"]))
        processors[name] = processor
    await backend.append(events(2))
    assert await processors["a"].process_events_once() == 2
    await backend.append(events(2, start=2))
    assert await processors["b"].process_events_once() == 4
    assert await processors["a"].process_events_once() == 2
    assert seen == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}


async def test_failing_handler_is_isolated_logged_counted_and_dead_lettered(
    backend: BaseEventStorage,
) -> None:
    good: list[int] = []
    attempts: list[int] = []

    def fragile(event: TaskEvent) -> None:
        if event.details["seq"] == 1:
            attempts.append(1)
            raise ValueError("cannot handle seq 1")

    processor = AsyncEventProcessor(event_storage=backend, name="p", max_handler_attempts=3)
    processor.register_handler(fragile, name="fragile")
    processor.register_handler(lambda e: good.append(e.details["seq"]), name="good")
    batch = events(3)
    await backend.append(batch)
    with structlog.testing.capture_logs() as logs:
        assert await processor.process_events_once() == 3
    assert good == [0, 1, 2]  # the other handler and the other events went on
    assert len(attempts) == 3  # retried a bounded number of times
    assert processor.stats.handler_errors == {"fragile": 3}
    assert processor.stats.dead_lettered == 1
    failures = [entry for entry in logs if entry["event"] == "omniq.handler_failed"]
    assert [(f["handler"], f["event_id"], f["attempt"]) for f in failures] == [
        ("fragile", batch[1].event_id, 1),
        ("fragile", batch[1].event_id, 2),
        ("fragile", batch[1].event_id, 3),
    ]
    assert failures[0]["error"] == "ValueError: cannot handle seq 1"
    assert failures[0]["log_level"] == "error"
    [dead] = await backend.dead_letters("p")
    assert (dead.handler, dead.error, dead.attempts, dead.event) == (
        "fragile", "ValueError: cannot handle seq 1", 3, batch[1]
    )
    # skipped: the checkpoint moved past the poison event
    assert await backend.get_position("p") == await backend.last_position()
    assert await processor.process_events_once() == 0


async def test_handler_that_recovers_on_retry_is_not_dead_lettered(
    backend: BaseEventStorage,
) -> None:
    calls: list[int] = []

    async def flaky(event: TaskEvent) -> None:
        calls.append(event.details["seq"])
        if len(calls) == 1:
            raise ConnectionError("blip")

    processor = AsyncEventProcessor(event_storage=backend)
    processor.register_handler(flaky, name="flaky")
    await backend.append(events(2))
    with structlog.testing.capture_logs():
        assert await processor.process_events_once() == 2
    assert calls == [0, 0, 1]
    assert processor.stats.handler_errors == {"flaky": 1}
    assert processor.stats.dead_lettered == 0
    assert await backend.dead_letters() == []


async def test_start_wakes_on_a_new_event_instead_of_polling(backend: BaseEventStorage) -> None:
    # the idle poll is 60 s: an event handled within a second was a wake-up, not a poll
    # (the wake-up latency itself is a bench figure, not a timed test)
    arrived: list[float] = []
    processor = AsyncEventProcessor(event_storage=backend, idle_timeout=60.0)
    processor.register_handler(lambda e: arrived.append(time.monotonic()))
    runner = asyncio.ensure_future(processor.start())
    await async_wait_until(lambda: processor.stats.running, what="processor running")
    latencies = []
    for i in range(5):
        await async_wait_until(lambda: processor.stats.caught_up, what="processor idle")
        await backend.append(events(1, start=i))
        stored_at = time.monotonic()
        await async_wait_until(lambda n=i + 1: len(arrived) == n, timeout=5, interval=0.001)
        latencies.append(arrived[-1] - stored_at)
    await processor.stop()
    await runner
    assert max(latencies) < 1.0, latencies
    assert processor.stats.running is False


async def test_stop_finishes_the_batch_in_flight_and_commits(backend: BaseEventStorage) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    handled: list[int] = []

    async def slow(event: TaskEvent) -> None:
        if event.details["seq"] == 0:
            entered.set()
            await release.wait()
        handled.append(event.details["seq"])

    await backend.append(events(5))
    processor = AsyncEventProcessor(event_storage=backend, batch_size=5)
    processor.register_handler(slow)
    runner = asyncio.ensure_future(processor.start())
    await asyncio.wait_for(entered.wait(), 5)
    stopper = asyncio.ensure_future(processor.stop())
    await asyncio.sleep(0)
    assert not stopper.done()  # stop waits for the batch in flight
    release.set()
    await asyncio.wait_for(stopper, 5)
    assert runner.done()
    assert handled == [0, 1, 2, 3, 4]
    assert await backend.get_position("default") == await backend.last_position()


async def test_stop_from_inside_a_handler_does_not_deadlock(backend: BaseEventStorage) -> None:
    processor = AsyncEventProcessor(event_storage=backend)

    async def stopper(event: TaskEvent) -> None:
        await processor.stop()

    processor.register_handler(stopper)
    await backend.append(events(1))
    await asyncio.wait_for(processor.start(), 5)
    assert await backend.get_position("default") == await backend.last_position()


async def test_cancelled_start_stops_running_and_redelivers_unacked(
    backend: BaseEventStorage,
) -> None:
    entered = asyncio.Event()

    async def hang(event: TaskEvent) -> None:
        entered.set()
        await asyncio.Event().wait()

    processor = AsyncEventProcessor(event_storage=backend)
    processor.register_handler(hang)
    await backend.append(events(1))
    runner = asyncio.ensure_future(processor.start())
    await asyncio.wait_for(entered.wait(), 5)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert processor.stats.running is False
    again: list[TaskEvent] = []
    retry = AsyncEventProcessor(event_storage=backend)
    retry.register_handler(again.append)
    assert await retry.process_events_once() == 1  # at-least-once: it was never acked
    assert again == [(await backend.read_after(None, 1))[0].event]


async def test_start_twice_is_refused(backend: BaseEventStorage) -> None:
    processor = AsyncEventProcessor(event_storage=backend)
    runner = asyncio.ensure_future(processor.start())
    await async_wait_until(lambda: processor.stats.running)
    with pytest.raises(RuntimeError, match="already running"):
        await processor.start()
    await processor.stop()
    await runner


def test_bad_settings() -> None:
    storage = MemoryBackend()
    for kwargs, setting in (
        ({"name": ""}, "name"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_handler_attempts": 0}, "max_handler_attempts"),
    ):
        with pytest.raises(ConfigurationError) as info:
            AsyncEventProcessor(event_storage=storage, **kwargs)  # type: ignore[arg-type]
        assert info.value.setting == setting
    with pytest.raises(ConfigurationError) as info:
        AsyncEventProcessor(event_storage=None)  # type: ignore[arg-type]
    assert info.value.setting == "event_storage"
    processor = AsyncEventProcessor(event_storage=storage)
    with pytest.raises(ConfigurationError) as info:
        processor.register_handler("not callable")  # type: ignore[arg-type]
    assert info.value.setting == "handler"
    with pytest.raises(ConfigurationError) as info:
        processor.register_handler(print, [""])
    assert info.value.setting == "event_types"


@pytest.mark.parametrize("bad", [True, float("nan"), 0, -1])
@pytest.mark.parametrize(("setting", "wanted"), [
    ("batch_size", "a positive integer"),
    ("max_handler_attempts", "a positive integer"),
    ("idle_timeout", "a positive number of seconds"),
])
def test_bad_numbers_are_refused_with_their_value(setting: str, wanted: str, bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncEventProcessor(MemoryBackend(), **{setting: bad})
    assert str(info.value) == f"{setting} must be {wanted}, got {bad!r}"
    assert (info.value.setting, info.value.value) == (setting, bad)


def test_idle_timeout_is_finite_seconds() -> None:
    assert AsyncEventProcessor(MemoryBackend(), idle_timeout=2).idle_timeout == 2.0
    with pytest.raises(ConfigurationError) as info:
        AsyncEventProcessor(MemoryBackend(), idle_timeout=math.inf)
    assert str(info.value) == "idle_timeout must be a finite positive number of seconds, got inf"


def run_processor(db: Path, out: Path, mode: str, delay: float = 0.0) -> subprocess.Popen[str]:
    script = str(HERE / "_proc_processor.py")
    return subprocess.Popen(
        [sys.executable, script, str(db), str(out), "killme", "50", mode, str(delay)],
        stdout=subprocess.PIPE,
        text=True,
    )


def handled_ids(out: Path) -> list[str]:
    return out.read_text().split() if out.exists() else []


async def test_processor_killed_with_sigkill_mid_stream_resumes_at_least_once(
    tmp_path: Path,
) -> None:
    db, out = tmp_path / "events.db", tmp_path / "handled.txt"
    batch = events(3000)
    async with SQLiteBackend(db) as storage:
        await storage.append(batch)
    proc = run_processor(db, out, "run", delay=0.001)  # ~3 s of work
    try:
        # handled partly: well into the stream, far from its end
        wait_until(lambda: len(handled_ids(out)) >= 300, timeout=60, what="300 handled")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before_restart = handled_ids(out)
    assert 300 <= len(before_restart) < 3000
    restarted = run_processor(db, out, "once")
    stdout, _ = restarted.communicate(timeout=60)
    assert restarted.returncode == 0
    handled_after = int(stdout.split()[-1])
    ids = handled_ids(out)
    assert set(ids) == {e.event_id for e in batch}  # every event handled at least once
    # the restart resumed at the checkpoint: it redid at most the one unacknowledged batch
    assert 3000 - len(before_restart) <= handled_after <= 3000 - len(before_restart) + 50
    async with SQLiteBackend(db) as storage:
        assert await storage.get_position("killme") == await storage.last_position()
