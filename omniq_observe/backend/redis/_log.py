"""The log of :mod:`omniq_observe.backend.redis` read as one: its streams merged by entry id,
and ``query`` and ``prune`` by time without scanning the whole log.

Entry ids are unique over the streams and grow in append order (see ``_core``), so reading
after a position is reading each stream after it and merging by id.

The append script gives an event the entry id of its own time (``<ms>-0``) while events
arrive in time order, else the next id; an event whose id ends up more than
:data:`MARGIN_MS` after its time is also put in the *late index*, a sorted set by event
time (see :data:`~omniq_observe.backend.redis._scripts.APPEND_SCRIPT`). Therefore:

* every event of time ``>= since`` has an id ``>= since - MARGIN_MS`` (the margin covers an
  event stamped ahead of the Redis server's clock, which is stored at clock + margin), so
  ``query(since=)`` starts its ``XRANGE`` there;
* every event of time ``< until`` has an id ``<= until + MARGIN_MS`` or is in the late
  index, so ``query(until=)`` stops its ``XRANGE`` there and then reads the late index;
* every entry whose id is before ``cutoff`` holds an event older than ``cutoff``, so
  ``prune(older_than=)`` trims those with ``XTRIM MINID`` (in chunks, removing their ids
  from the task index lists and the dedup state, see ``PRUNE_SCRIPT``), then deletes the
  few older events in the margin after the cutoff and in the late index (and forgets
  their ids too).

Errors propagate as redis-py exceptions; the backend translates them.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from omniq_observe.backend.base import Page, Position, StoredEvent, query_matches
from omniq_observe.backend.redis._core import (
    Entry,
    Keys,
    dedup_bucket,
    dedup_id,
    id_str,
    parse_stream_id,
    stored_entries,
)
from omniq_observe.backend.redis._scripts import DEDUP_BUCKETS
from omniq_observe.models.event import epoch_us

__all__ = ["MARGIN_MS", "SCAN", "prune_newest", "prune_older", "query_log", "read_merged"]

SCAN = 1000
#: How far (ms) an event's entry id may lie from its time before it counts as late, and
#: how far ahead of the server's clock an event may be stamped and still be stored at its
#: own time.
MARGIN_MS = 10_000
PRUNE_CHUNK = 2000  # entries per script call: Redis serves other clients between calls

_Tagged = tuple[int, Entry]  # an entry and the partition whose stream holds it


class _Cursor:
    """What the merge read ahead of one stream."""

    __slots__ = ("done", "entries", "start", "taken")

    def __init__(self, start: str) -> None:
        self.start = start
        self.entries: list[Entry] = []
        self.taken = 0
        self.done = False


async def _refill(
    client: Any, streams: Sequence[str], cursors: dict[int, _Cursor], end: str, count: int,
    heap: list[tuple[tuple[int, int], int]],
) -> None:
    """Read the next ``count`` entries of each of ``cursors``' streams; queue their heads."""
    pipe = client.pipeline(transaction=False)
    for part, cursor in cursors.items():
        pipe.xrange(streams[part], cursor.start, end, count=count)
    for (part, cursor), entries in zip(cursors.items(), await pipe.execute(), strict=True):
        cursor.entries, cursor.taken, cursor.done = entries, 0, len(entries) < count
        if entries:
            cursor.start = f"({id_str(entries[-1][0])}"
            heapq.heappush(heap, (parse_stream_id(entries[0][0]), part))


async def read_merged(
    client: Any, streams: Sequence[str], start: str, end: str, limit: int
) -> list[_Tagged]:
    """Up to ``limit`` entries of ``streams`` between the ``XRANGE`` bounds ``start`` and
    ``end``, merged by id, each with its partition."""
    if len(streams) == 1:
        return [(0, entry) for entry in await client.xrange(streams[0], start, end, count=limit)]
    count = min(limit, max(16, 2 * limit // len(streams)))
    cursors = {part: _Cursor(start) for part in range(len(streams))}
    heap: list[tuple[tuple[int, int], int]] = []
    await _refill(client, streams, cursors, end, count, heap)
    found: list[_Tagged] = []
    while heap and len(found) < limit:
        _, part = heapq.heappop(heap)
        cursor = cursors[part]
        found.append((part, cursor.entries[cursor.taken]))
        cursor.taken += 1
        if cursor.taken < len(cursor.entries):
            heapq.heappush(heap, (parse_stream_id(cursor.entries[cursor.taken][0]), part))
        elif not cursor.done:  # its next entry may come before the other heads
            await _refill(client, streams, {part: cursor}, end, count, heap)
    return found


def _events(tagged: list[_Tagged]) -> list[StoredEvent]:
    return stored_entries([entry for _, entry in tagged])


async def _pages(
    client: Any, streams: Sequence[str], start: str, end: str = "+"
) -> AsyncIterator[list[_Tagged]]:
    """The log's entries from ``start`` to ``end``, one page of up to ``SCAN`` at a time."""
    while True:
        tagged = await read_merged(client, streams, start, end, SCAN)
        yield tagged
        if len(tagged) < SCAN:
            return
        start = f"({id_str(tagged[-1][1][0])}"


def _ms(ts: datetime) -> int:
    return epoch_us(ts) // 1000


def _start(since: datetime | None, after: Position | None) -> str:
    """Where a query's ``XRANGE`` starts: after ``after``, at ``since`` minus the margin."""
    if since is None:
        return "-" if after is None else f"({id_str(after)}"
    seek = (max(0, _ms(since) - MARGIN_MS), 0)
    if after is not None and parse_stream_id(after) >= seek:
        return f"({id_str(after)}"
    return f"{seek[0]}-0"


async def query_log(
    client: Any,
    keys: Keys,
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
    async for page in _pages(client, keys.streams, _start(since, after), end):
        for stored in _events(page):
            if query_matches(stored.event, types, since, until):
                if len(found) == limit:
                    return Page(found, found[-1].position)
                found.append(stored)
    if until is not None:
        beyond = parse_stream_id(end)
        if after is not None:
            beyond = max(beyond, parse_stream_id(after))
        low = "-inf" if since is None else _ms(since)
        for stored in _events(await _late(client, keys, low, _ms(until), beyond)):
            if query_matches(stored.event, types, since, until):
                if len(found) == limit:
                    return Page(found, found[-1].position)
                found.append(stored)
    return Page(found, None)


def _late_member(member: Any) -> tuple[str, int]:
    """A late-index member's entry id and partition (stores of one stream wrote the id)."""
    entry_id, _, part = id_str(member).partition("/")
    return entry_id, int(part or 0)


async def _late(
    client: Any, keys: Keys, low: Any, high: int, beyond: tuple[int, int] = (-1, 0)
) -> list[_Tagged]:
    """The late-index entries timed ``low..high`` (ms, inclusive) with ids after ``beyond``,
    in id order."""
    members = [_late_member(m) for m in await client.zrangebyscore(keys.late, low, high)]
    late = sorted((m for m in members if parse_stream_id(m[0]) > beyond),
                  key=lambda m: parse_stream_id(m[0]))
    if not late:
        return []
    pipe = client.pipeline(transaction=False)
    for entry_id, part in late:
        pipe.xrange(keys.streams[part], entry_id, entry_id)
    replies = await pipe.execute()
    return [(part, entries[0]) for (_, part), entries in zip(late, replies, strict=True)
            if entries]


async def _trim(client: Any, keys: Keys, script: Any, last: str) -> int:
    """Delete every entry up to id ``last`` (and its task index entry); return how many."""
    deleted = 0
    for stream in keys.streams:
        while True:
            trimmed = int(await script(keys=[stream, keys.dedup],
                                       args=[keys.task_prefix, last, PRUNE_CHUNK]))
            deleted += trimmed
            if trimmed < PRUNE_CHUNK:
                break
    return deleted


def _add_older(old: dict[str, tuple[int, str, str]], tagged: list[_Tagged],
               cutoff: datetime) -> None:
    """Add the entries of ``tagged`` whose event is older than ``cutoff`` to ``old``."""
    for (part, entry), stored in zip(tagged, _events(tagged), strict=True):
        if stored.event.timestamp < cutoff:
            old[id_str(entry[0])] = (part, stored.event.task_id, stored.event.event_id)


async def _forget(client: Any, pipe: Any, keys: Keys, event_ids: list[str]) -> None:
    """Queue on ``pipe`` the removal of ``event_ids`` from the dedup state."""
    if not event_ids:
        return
    gen = int(await client.hget(keys.dedup, "g") or 0)
    for event_id in event_ids:
        packed = dedup_id(event_id)
        bucket = dedup_bucket(packed, DEDUP_BUCKETS)
        for g in (gen, gen - 1):
            pipe.hdel(f"{keys.dedup}:{g}:{bucket}", packed)


async def prune_older(client: Any, keys: Keys, script: Any, cutoff: datetime) -> int:
    """Delete the events older than ``cutoff``; return how many were deleted."""
    cutoff_ms = _ms(cutoff)
    deleted = await _trim(client, keys, script, str(cutoff_ms - 1)) if cutoff_ms > 0 else 0
    old: dict[str, tuple[int, str, str]] = {}  # entry id -> partition, task, event id
    async for page in _pages(client, keys.streams, f"{max(cutoff_ms, 0)}-0",
                             str(max(cutoff_ms, 0) + MARGIN_MS)):
        _add_older(old, page, cutoff)
    late = await _late(client, keys, "-inf", cutoff_ms)
    _add_older(old, late, cutoff)
    gone = await client.zrangebyscore(keys.late, "-inf", cutoff_ms)
    pipe = client.pipeline(transaction=False)
    for entry_id, (part, task_id, _) in old.items():
        pipe.xdel(keys.streams[part], entry_id)
        pipe.lrem(keys.task_prefix + task_id, 1, entry_id)
    kept = {id_str(entry[0]) for _, entry in late} - old.keys()
    stale = [m for m in gone if _late_member(m)[0] not in kept]  # deleted now, or trimmed
    if stale:
        pipe.zrem(keys.late, *stale)
    await _forget(client, pipe, keys, [event_id for _, _, event_id in old.values()])
    replies = await pipe.execute()
    return deleted + sum(int(r) for r in replies[0 : 2 * len(old) : 2])


async def prune_newest(client: Any, keys: Keys, script: Any, keep: int) -> int:
    """Delete all but the newest ``keep`` events; return how many were deleted."""
    pipe = client.pipeline(transaction=False)
    for stream in keys.streams:
        pipe.xlen(stream)
    drop = sum(int(n) for n in await pipe.execute()) - keep
    last, start = None, "-"
    while drop > 0:  # the id of the newest event to drop
        tagged = await read_merged(client, keys.streams, start, "+", min(drop, 10 * SCAN))
        if not tagged:
            break
        drop -= len(tagged)
        last = id_str(tagged[-1][1][0])
        start = f"({last}"
    return 0 if last is None else await _trim(client, keys, script, last)
