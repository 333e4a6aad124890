"""A private event loop on its own thread, for the blocking wrappers.

``asyncio.run`` per call fails inside a thread that already runs a loop, and so does
``anyio.from_thread.run`` outside a worker thread; a loop of our own on a thread of our
own works from anywhere. The caller's contextvars (and so its OpenTelemetry context)
travel with each call: ``call_soon_threadsafe`` copies the calling thread's context.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

_T = TypeVar("_T")


class LoopThread:
    """Runs coroutines to completion on a private loop thread, started on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True while the loop thread runs."""
        return self._thread is not None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name=self.name, daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop thread and block until it finishes; return its result.

        Raises:
            RuntimeError: called from the loop thread itself (it would deadlock).
        """
        loop = self._ensure()
        if threading.current_thread() is self._thread:
            coro.close()
            msg = f"{self.name}: a blocking call from inside its own loop would deadlock"
            raise RuntimeError(msg)
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop and join its thread. Idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:  # pragma: no cover - stop from inside
            loop.call_soon(loop.stop)
            return
        # Everything that needs the loop runs on its own thread: the caller's thread may be
        # running a loop of its own, where run_until_complete would fail.
        asyncio.run_coroutine_threadsafe(_wind_down(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _wind_down() -> None:
    """Cancel the loop's other tasks and close its async generators."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()
