"""Lease renewal (events/_leases.py): a batch whose handlers outlast the backend's lease
stays with the member handling it, on the real Redis and PostgreSQL servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest
import structlog
from _helpers import POSTGRES_URL, REDIS_URL, async_wait_until
from _server_backends import make_postgres, make_redis

from omniq_observe.backend import BaseEventStorage, MemoryBackend, from_url
from omniq_observe.backend.base import Consumer, StoredEvent
from omniq_observe.backend.postgres import PostgresBackend
from omniq_observe.backend.redis import RedisBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exceptions import BackendUnavailableError
from omniq_observe.models.event import TaskEvent

LEASE = 0.6


@pytest.fixture(params=["redis", "postgres"])
async def pair(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[BaseEventStorage, BaseEventStorage]]:
    """Two backends on the same data, as two processes of one group would have."""
    if request.param == "redis":
        first: BaseEventStorage = make_redis(claim_idle=LEASE, claim_interval=0.05)
        assert isinstance(first, RedisBackend)
        url = f"{REDIS_URL}?prefix={first.prefix}&claim_idle={LEASE}&claim_interval=0.05"
    else:
        first = make_postgres(lease_seconds=LEASE)
        assert isinstance(first, PostgresBackend)
        url = f"{POSTGRES_URL}?schema={first.schema}&lease_seconds={LEASE}"
    second = from_url(url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_a_batch_held_past_its_lease_is_not_taken_over(
    pair: tuple[BaseEventStorage, BaseEventStorage],
) -> None:
    storage_a, storage_b = pair
    assert storage_a.lease_seconds == LEASE
    events = [TaskEvent(task_id=f"t{i}", event_type="ENQUEUED") for i in range(5)]
    await storage_a.append(events)
    release = asyncio.Event()
    handled_a: list[str] = []
    handled_b: list[str] = []

    async def slow(event: TaskEvent) -> None:
        handled_a.append(event.event_id)
        await release.wait()

    a = AsyncEventProcessor(storage_a, "group", member="a")
    a.register_handler(slow)
    b = AsyncEventProcessor(storage_b, "group", member="b")
    b.register_handler(lambda e: handled_b.append(e.event_id))
    running = asyncio.ensure_future(a.process_events_once())
    await async_wait_until(lambda: handled_a, what="a holding the batch")
    held_since = time.monotonic()

    async def b_found_nothing_for_three_leases() -> bool:
        assert await b.process_events_once() == 0, "b took a's batch over"
        return time.monotonic() - held_since > 3 * LEASE

    await async_wait_until(b_found_nothing_for_three_leases, timeout=30, interval=0.05)
    release.set()
    assert await running == 5
    assert handled_a == [e.event_id for e in events]
    assert handled_b == []
    assert a.stats.storage_errors == 0
    assert await b.process_events_once() == 0  # acknowledged: nothing left for anyone


class _FailingRenewal(MemoryBackend):
    """A memory backend with leases whose renewal fails (a fault that the real backends
    cannot be made to produce on cue)."""

    lease_seconds = 0.03

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0

    async def renew(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        self.renewals += 1
        msg = f"renewal {self.renewals} failed"
        raise BackendUnavailableError(msg)


async def test_a_failed_renewal_is_logged_and_counted_and_the_batch_goes_on() -> None:
    storage = _FailingRenewal()
    await storage.append([TaskEvent(task_id="t", event_type="STARTED")])
    processor = AsyncEventProcessor(storage, "group")

    async def slow(event: TaskEvent) -> None:
        await async_wait_until(lambda: storage.renewals >= 2, what="two renewals")

    processor.register_handler(slow)
    with structlog.testing.capture_logs() as logs:
        assert await processor.process_events_once() == 1
    failures = [e for e in logs if e["event"] == "omniq.lease_renew_failed"]
    assert [f["error"] for f in failures[:2]] == [
        "BackendUnavailableError: renewal 1 failed",
        "BackendUnavailableError: renewal 2 failed",
    ]
    assert processor.stats.storage_errors == len(failures) == storage.renewals
    assert await storage.get_position("group") == 1  # acknowledged all the same

