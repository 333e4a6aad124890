"""Read a store's history from a point in time, then follow what is appended after it.

Shared by ``top`` and the web view of ``serve``: both load the recent history with
``query(since=...)``, then poll ``read_after`` from where the log ended when they began.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from omniq_observe.backend import BaseEventStorage, Position
from omniq_observe.backend.base import _position_after
from omniq_observe.models.event import TaskEvent

__all__ = ["StorageFollower", "later_position"]

Feed = Callable[[Iterable[TaskEvent]], Awaitable[None]]
_PAGE = 5000


def later_position(a: Position | None, b: Position | None) -> Position | None:
    """The later of two log positions (ints, or Redis ``ms-seq`` stream ids)."""
    if a is None or b is None:
        return b if a is None else a
    return b if _position_after(b, a) else a


class StorageFollower:
    """Feeds a store's events to ``feed``: the history from a time, then new events.

    Args:
        storage: where events are read (``query``, ``last_position``, ``read_after``).
        feed: takes events in log order.
        page: events per read.
    """

    def __init__(self, storage: BaseEventStorage, feed: Feed, page: int = _PAGE) -> None:
        self.storage = storage
        self.feed = feed
        self.page = page
        self.position: Position | None = None

    async def load(self, since: datetime) -> int:
        """Feed the history from ``since``, then remember where the log ends; return how
        many events were fed."""
        start = await self.storage.last_position()
        after: Position | None = None
        read = 0
        while True:
            page = await self.storage.query(since=since, limit=self.page, after=after)
            await self.feed(stored.event for stored in page.events)
            read += len(page.events)
            if page.events:
                start = later_position(start, page.events[-1].position)
            if page.next_cursor is None:
                break
            after = page.next_cursor
        self.position = start
        return read

    async def poll(self) -> int:
        """Feed every event stored since the last call; return how many."""
        read = 0
        while True:
            batch = await self.storage.read_after(self.position, self.page)
            if not batch:
                return read
            self.position = batch[-1].position
            await self.feed(stored.event for stored in batch)
            read += len(batch)
