"""Lease renewal for :mod:`omniq_observe.events.processor`.

On backends that share work among the members of a group (Redis consumer groups,
PostgreSQL leases) a claimed batch goes to another member once it was held for
``lease_seconds``. A batch whose handlers run longer than that would be handled twice, so
while the handlers run the processor renews the lease every third of ``lease_seconds``.
A failed renewal is logged and counted; the batch goes on (delivery is at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from types import TracebackType

from omniq_observe.backend.base import BaseEventStorage, Consumer, StoredEvent

__all__ = ["LeaseRenewal"]


class LeaseRenewal:
    """Renews ``consumer``'s lease on ``batch`` while the ``with`` block runs.

    Nothing is scheduled until a third of the lease has passed, so short batches cost one
    timer.

    Args:
        storage: the backend; its ``lease_seconds`` must not be ``None``.
        consumer: the member holding the batch.
        batch: the claimed batch.
        on_error: called with the exception of a failed renewal.
    """

    def __init__(
        self,
        storage: BaseEventStorage,
        consumer: Consumer,
        batch: Sequence[StoredEvent],
        on_error: Callable[[Exception], None],
    ) -> None:
        assert storage.lease_seconds is not None
        self.interval = storage.lease_seconds / 3
        self._storage, self._consumer, self._batch = storage, consumer, batch
        self._on_error = on_error
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> LeaseRenewal:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.interval, self._start)
        return self

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._renew_until_cancelled())

    async def _renew_until_cancelled(self) -> None:
        while True:
            try:
                await self._storage.renew(self._consumer, self._batch)
            except Exception as exc:
                self._on_error(exc)
            await asyncio.sleep(self.interval)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        task = self._task
        if task is not None:
            task.cancel()
            # Let the cancellation land without waiting: a renewal in flight finishes on
            # its own; its outcome no longer matters.
            task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
