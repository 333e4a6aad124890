"""MemoryBackend specifics: the max_events bound and its settings."""

from __future__ import annotations

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


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10"])
def test_max_events_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        MemoryBackend(max_events=bad)  # type: ignore[arg-type]
    assert info.value.setting == "max_events"
    assert info.value.value == bad
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
