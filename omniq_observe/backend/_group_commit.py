"""Group commit for the network backends (:mod:`~omniq_observe.backend.postgres`,
:mod:`~omniq_observe.backend.redis`).

Concurrent ``append`` calls queue their events; one writer task takes everything waiting
(up to ``max_batch`` events) and writes it in one round trip (PostgreSQL: one transaction
with one COPY; Redis: one pipeline), then resumes every caller. With 64 concurrent loggers
that is one write for up to 64 events instead of 64.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from omniq_observe.models.event import TaskEvent

__all__ = ["GroupCommitter"]

_Pending = tuple[Sequence[TaskEvent], "asyncio.Future[None]"]


class GroupCommitter:
    """Batches concurrent writes of one event loop into shared transactions.

    Args:
        write: writes a list of events in one transaction; raises on failure.
        max_batch: the most events one transaction takes (one caller's batch is never
            split).
    """

    def __init__(self, write: Callable[[list[TaskEvent]], Awaitable[None]], max_batch: int) -> None:
        self._write = write
        self.max_batch = max_batch
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def submit(self, events: Sequence[TaskEvent]) -> None:
        """Write ``events`` in the next transaction; return once it committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((events, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        self._wake.set()
        # A cancelled caller cancels only its own future: the writer task goes on with the
        # shared transaction and skips that future.
        await future

    async def _run(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            group: list[_Pending] = []
            size = 0
            while pending and (not group or size + len(pending[0][0]) <= self.max_batch):
                item = pending.pop(0)
                group.append(item)
                size += len(item[0])
            await self._commit(group)

    async def _commit(self, group: list[_Pending]) -> None:
        error: Exception | None = None
        try:
            await self._write([event for batch, _ in group for event in batch])
        except Exception as exc:
            if len(group) > 1:  # one bad event must fail only its own caller
                for item in group:
                    await self._commit([item])
                return
            error = exc
        for _, future in group:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def close(self) -> None:
        """Write what is queued, then stop the writer task."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
