"""Time-based ``query`` and ``prune`` of :mod:`omniq_observe.backend.redis`, without scanning
the whole stream.

The append script gives an event the entry id of its own time (``<ms>-*``) while events
arrive in time order, else the next id; an event whose id ends up more than
:data:`MARGIN_MS` after its time is also put in the *late index*, a sorted set by event
time (see :data:`~omniq_observe.backend._redis_scripts.APPEND_SCRIPT`). Therefore:

* every event of time ``>= since`` has an id ``>= since - MARGIN_MS`` (the margin covers an
  event stamped ahead of the Redis server's clock, which is stored at clock + margin), so
  ``query(since=)`` starts its ``XRANGE`` there;
* every event of time ``< until`` has an id ``<= until + MARGIN_MS`` or is in the late
  index, so ``query(until=)`` stops its ``XRANGE`` there and then reads the late index;
* every entry whose id is before ``cutoff`` holds an event older than ``cutoff``, so
  ``prune(older_than=)`` trims those with ``XTRIM MINID`` (in chunks, removing their ids
  from the task index lists, see ``PRUNE_SCRIPT``), then deletes the few older events in
  the margin after the cutoff and in the late index.

Errors propagate as redis-py exceptions; the backend translates them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from omniq_observe.backend._redis_groups import stored_entries
from omniq_observe.backend._redis_scripts import id_str, parse_stream_id
from omniq_observe.backend.base import Page, Position, StoredEvent, query_matches
from omniq_observe.models.event import epoch_us

__all__ = ["MARGIN_MS", "SCAN", "StreamKeys", "prune_older", "query_stream"]

SCAN = 1000
#: How far (ms) an event's entry id may lie from its time before it counts as late, and
#: how far ahead of the server's clock an event may be stamped and still be stored at its
#: own time.
MARGIN_MS = 10_000
PRUNE_CHUNK = 2000  # entries per script call: Redis serves other clients between calls


@dataclass(frozen=True)
class StreamKeys:
    """The keys of one backend that ``query`` and ``prune`` use."""

    stream: str
    late: str
    task_prefix: str


def _ms(ts: datetime) -> int:
    return epoch_us(ts) // 1000


async def _pages(
    client: Any, stream: str, start: str, end: str = "+"
) -> AsyncIterator[list[StoredEvent]]:
    """The stream's entries from ``start`` to ``end``, one page of up to ``SCAN`` at a time."""
    while True:
        entries = await client.xrange(stream, start, end, count=SCAN)
        yield stored_entries(entries)
        if len(entries) < SCAN:
            return
        start = f"({id_str(entries[-1][0])}"


def _start(since: datetime | None, after: Position | None) -> str:
    """Where a query's ``XRANGE`` starts: after ``after``, at ``since`` minus the margin."""
    if since is None:
        return "-" if after is None else f"({id_str(after)}"
    seek = (max(0, _ms(since) - MARGIN_MS), 0)
    if after is not None and parse_stream_id(after) >= seek:
        return f"({id_str(after)}"
    return f"{seek[0]}-0"


async def query_stream(
    client: Any,
    keys: StreamKeys,
    *,
    types: set[str] | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after: Position | None,
) -> Page:
    """Up to ``limit`` events after ``after`` that match the filters (UTC datetimes)."""
    found: list[StoredEvent] = []
    end = "+" if until is None else str(_ms(until) + MARGIN_MS)
    async for page in _pages(client, keys.stream, _start(since, after), end):
        for stored in page:
            if query_matches(stored.event, types, since, until):
                if len(found) == limit:
                    return Page(found, found[-1].position)
                found.append(stored)
    if until is not None:
        beyond = parse_stream_id(end)
        if after is not None:
            beyond = max(beyond, parse_stream_id(after))
        low = "-inf" if since is None else _ms(since)
        for stored in await _late(client, keys, low, _ms(until), beyond):
            if query_matches(stored.event, types, since, until):
                if len(found) == limit:
                    return Page(found, found[-1].position)
                found.append(stored)
    return Page(found, None)


async def _late(
    client: Any, keys: StreamKeys, low: Any, high: int, beyond: tuple[int, int] = (-1, 0)
) -> list[StoredEvent]:
    """The late-index events timed ``low..high`` (ms, inclusive) with ids after ``beyond``,
    in id order."""
    ids = await client.zrangebyscore(keys.late, low, high)
    ids = sorted((i for i in map(id_str, ids) if parse_stream_id(i) > beyond),
                 key=parse_stream_id)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xrange(keys.stream, entry_id, entry_id)
    return stored_entries([entries[0] for entries in await pipe.execute() if entries])


async def prune_older(client: Any, keys: StreamKeys, script: Any, cutoff: datetime) -> int:
    """Delete the events older than ``cutoff``; return how many were deleted."""
    cutoff_ms = _ms(cutoff)
    deleted = 0
    if cutoff_ms > 0:
        while True:
            trimmed = int(await script(keys=[keys.stream],
                                       args=[keys.task_prefix, cutoff_ms - 1, PRUNE_CHUNK]))
            deleted += trimmed
            if trimmed < PRUNE_CHUNK:
                break
    old: list[StoredEvent] = []
    async for page in _pages(client, keys.stream, f"{max(cutoff_ms, 0)}-0",
                             str(max(cutoff_ms, 0) + MARGIN_MS)):
        old += [s for s in page if s.event.timestamp < cutoff]
    late = await _late(client, keys, "-inf", cutoff_ms)
    old += [s for s in late if s.event.timestamp < cutoff and s not in old]
    gone = await client.zrangebyscore(keys.late, "-inf", cutoff_ms)
    pipe = client.pipeline(transaction=False)
    for stored in old:
        pipe.xdel(keys.stream, str(stored.position))
        pipe.lrem(keys.task_prefix + stored.event.task_id, 1, str(stored.position))
    kept = {str(s.position) for s in late if s not in old}
    stale = [i for i in map(id_str, gone) if i not in kept]  # deleted now, or trimmed
    if stale:
        pipe.zrem(keys.late, *stale)
    replies = await pipe.execute()
    return deleted + sum(int(r) for r in replies[0 : 2 * len(old) : 2])
