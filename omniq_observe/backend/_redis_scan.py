"""Whole-stream scans of :mod:`omniq_observe.backend.redis`: ``query`` and ``prune`` by time.

A stream is ordered by entry id, not by event time, so both read it in pages of ``SCAN``
entries with ``XRANGE``. Errors propagate as redis-py exceptions; the backend translates
them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from omniq_observe.backend._redis_groups import stored_entries
from omniq_observe.backend._redis_scripts import id_str
from omniq_observe.backend.base import Page, Position, StoredEvent, query_matches

__all__ = ["SCAN", "prune_older", "query_stream"]

SCAN = 1000


async def _pages(client: Any, stream: str, start: str) -> AsyncIterator[list[StoredEvent]]:
    """The stream's entries from ``start`` on, one page of up to ``SCAN`` at a time."""
    while True:
        entries = await client.xrange(stream, start, "+", count=SCAN)
        yield stored_entries(entries)
        if len(entries) < SCAN:
            return
        start = f"({id_str(entries[-1][0])}"


async def query_stream(
    client: Any,
    stream: str,
    *,
    types: set[str] | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after: Position | None,
) -> Page:
    """Up to ``limit`` events after ``after`` that match the filters (UTC datetimes)."""
    found: list[StoredEvent] = []
    start = "-" if after is None else f"({id_str(after)}"
    async for page in _pages(client, stream, start):
        for stored in page:
            if not query_matches(stored.event, types, since, until):
                continue
            if len(found) == limit:
                return Page(found, found[-1].position)
            found.append(stored)
    return Page(found, None)


async def prune_older(client: Any, stream: str, cutoff: datetime) -> int:
    """Delete events older than ``cutoff``: trim the leading run of old events with
    ``MINID``, then delete old stragglers; return how many were deleted."""
    first_kept: str | None = None
    stragglers: list[str] = []
    leading = 0
    async for page in _pages(client, stream, "-"):
        for stored in page:
            old = stored.event.timestamp < cutoff
            if first_kept is None:
                if old:
                    leading += 1
                else:
                    first_kept = str(stored.position)
            elif old:
                stragglers.append(str(stored.position))
    deleted = 0
    if first_kept is None and leading:
        deleted += int(await client.xtrim(stream, maxlen=0, approximate=False))
    elif leading:
        deleted += int(await client.xtrim(stream, minid=first_kept, approximate=False))
    for i in range(0, len(stragglers), SCAN):
        deleted += int(await client.xdel(stream, *stragglers[i : i + SCAN]))
    return deleted
