"""MemoryBackend specifics: the max_events bound and its settings."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from omniq_observe.backend import MemoryBackend, from_url
from omniq_observe.exceptions import ConfigurationError, InvalidURLError
from omniq_observe.models.event import TaskEvent


def events(count: int, start: int = 0) -> list[TaskEvent]:
    return [
        TaskEvent(task_id="t", event_type="STARTED", details={"seq": i})
        for i in range(start, start + count)
    ]


async def test_max_events_drops_the_oldest_and_keeps_positions_stable() -> None:
    backend = MemoryBackend(max_events=3)
    await backend.append(events(2))
    await backend.append(events(3, start=2))
    stored = await backend.read_after(None, 10)
    assert [s.event.details["seq"] for s in stored] == [2, 3, 4]
    assert [s.position for s in stored] == [3, 4, 5]
    assert await backend.count() == 3
    await backend.append(events(1, start=5))
    assert [s.event.details["seq"] for s in await backend.read_after(5, 10)] == [5]


async def test_unbounded_by_default() -> None:
    backend = MemoryBackend()
    await backend.append(events(5000))
    assert await backend.count() == 5000
    assert backend.max_events is None


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True, float("nan")])
def test_max_events_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        MemoryBackend(max_events=bad)  # type: ignore[arg-type]
    assert info.value.setting == "max_events"
    assert info.value.value is bad
    assert repr(bad) in str(info.value)


async def test_from_url_memory() -> None:
    backend = from_url("memory://")
    assert isinstance(backend, MemoryBackend)
    assert backend.max_events is None
    bounded = from_url("memory://?max_events=7")
    assert isinstance(bounded, MemoryBackend)
    assert bounded.max_events == 7
    with pytest.raises(InvalidURLError) as info:
        from_url("memory://?max_events=lots")
    assert "max_events='lots' is not a valid int" in str(info.value)


async def test_health_reports_the_event_count() -> None:
    backend = MemoryBackend()
    await backend.append(events(2))
    health = await backend.health()
    assert (health.ok, health.backend, health.detail) == (True, "memory", "2 events")


@pytest.mark.parametrize("bad", [-1, 2.5, True])
async def test_prune_refuses_a_bad_max_events(bad: object) -> None:
    backend = MemoryBackend()
    await backend.append(events(3))
    with pytest.raises(ConfigurationError) as info:
        await backend.prune(max_events=bad)  # type: ignore[arg-type]
    assert info.value.setting == "max_events"
    assert await backend.count() == 3


def _mixed(count: int, start: int = 0) -> list[TaskEvent]:
    """Events of tasks t0..t6 interleaved, with timestamps out of log order."""
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [
        TaskEvent(
            task_id=f"t{i % 7}",
            event_type="STARTED",
            timestamp=base + timedelta(seconds=(i * 37) % 101),
            details={"seq": i},
        )
        for i in range(start, start + count)
    ]


async def _expected_history(backend: MemoryBackend, task_id: str) -> list[int]:
    stored = await backend.read_after(None, 10_000)
    return [s.event.details["seq"] for s in stored if s.event.task_id == task_id]


async def test_task_history_index_follows_max_events_and_prune() -> None:
    backend = MemoryBackend(max_events=50)
    for start in range(0, 200, 13):
        await backend.append(_mixed(13, start))
    # max_events kept the newest 50 of 208: seq 158..207.
    assert [e.details["seq"] for e in await backend.task_history("t3")] == [
        s for s in range(158, 208) if s % 7 == 3
    ]
    await backend.prune(older_than=datetime(2026, 1, 1, 0, 0, 50, tzinfo=timezone.utc))
    await backend.prune(max_events=20)
    for task in (f"t{i}" for i in range(7)):
        history = [e.details["seq"] for e in await backend.task_history(task)]
        assert history == await _expected_history(backend, task)
    assert sum([len(await backend.task_history(f"t{i}")) for i in range(7)]) == 20
    assert await backend.task_history("t1", limit=1) == (await backend.task_history("t1"))[:1]
    await backend.prune(max_events=0)
    assert await backend.task_history("t1") == []
    assert backend._by_task == {}


async def test_task_history_does_not_read_the_whole_log() -> None:
    # The log holds 100,000 events of other tasks; if task_history scanned it, replacing
    # the log's list with one that refuses iteration would make it fail.
    backend = MemoryBackend()
    await backend.append([TaskEvent(task_id=f"x{i}", event_type="STARTED") for i in range(100_000)])
    await backend.append(events(2))

    class NoScan(list[TaskEvent]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("task_history scanned the log")

    backend._events = NoScan(backend._events)
    assert [e.details["seq"] for e in await backend.task_history("t")] == [0, 1]
