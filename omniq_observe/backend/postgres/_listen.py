"""LISTEN on a dedicated connection and wake waiting processors on each NOTIFY.

Used by :mod:`omniq_observe.backend.postgres`. The connection is re-opened with backoff
when it is lost; after every (re)connect waiters are woken once, because notifications
sent while nobody listened are gone.
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg

__all__ = ["Listener"]


class Listener:
    """Counts notifications on ``channel``; coroutines wait for the count to change.

    Args:
        dsn: the connection string.
        channel: the channel to LISTEN on (a plain identifier).
    """

    def __init__(self, dsn: str, channel: str) -> None:
        self.dsn = dsn
        self.channel = channel
        self.generation = 0
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def ready(self, timeout: float) -> bool:
        """Wait until the LISTEN is in place (at most ``timeout`` seconds)."""
        if self._ready.is_set():
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self._ready.is_set()

    async def wait(self, generation: int, timeout: float) -> bool:
        """Wait until a notification arrives after ``generation`` was read, or ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.generation == generation:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return True

    def _bump(self) -> None:
        self.generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {self.channel}")
                    self._ready.set()
                    self._bump()
                    backoff = 0.05
                    async for _ in conn.notifies():
                        self._bump()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._ready.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def close(self) -> None:
        """Stop listening and close the connection."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
