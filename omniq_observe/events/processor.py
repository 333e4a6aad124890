"""Event processors: read stored events after a named checkpoint and run handlers on them.

Delivery is at-least-once: a batch is acknowledged (the processor's position committed)
after every handler ran on every event of it, so a processor killed mid-batch sees the
batch again when it restarts. Handlers that must not double-count use ``event.event_id``.
Pairs that wait for the reorder window when a processor is killed are not lost: its
restart pairs their events again, without handing them to the handlers a second time
(see ``omniq_observe.events._checkpoint``).

The handler contract (:class:`Handler`): any callable taking a :class:`TaskEvent`, sync or
async. Optional extras a handler object may have:

* ``name``: the name used in logs and ``omniq_observe_handler_errors_total{handler}``;
* ``attach(processor)``: called once on registration, e.g. to read task history from
  ``processor.event_storage`` or to export ``processor.stats``.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import structlog

from omniq_observe._validate import positive_int, positive_seconds
from omniq_observe.backend.base import (
    BaseEventStorage,
    Consumer,
    StoredEvent,
    UndecodableEvent,
)
from omniq_observe.events._checkpoint import PairingCheckpoint
from omniq_observe.events._dispatch import Dispatcher
from omniq_observe.events._leases import LeaseRenewal
from omniq_observe.events._stats import ProcessorStats
from omniq_observe.events._sync import LoopThread
from omniq_observe.events._task_spans import TaskSpans
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import EventType, TaskEvent

__all__ = [
    "AsyncEventProcessor",
    "EventProcessor",
    "Handler",
    "ProcessorStats",
]


@runtime_checkable
class Handler(Protocol):
    """Anything called with each event; may return an awaitable."""

    def __call__(self, event: TaskEvent, /) -> Awaitable[None] | None: ...


class _ProcessorSettings:
    """The keywords of both processors, spelled out once (httpx's ``BaseClient`` serves
    ``Client`` and ``AsyncClient`` the same way), checked; then :meth:`_set_up`."""

    def __init__(
        self,
        event_storage: BaseEventStorage,
        name: str = "default",
        *,
        batch_size: int = 1000,
        max_handler_attempts: int = 3,
        idle_timeout: float = 1.0,
        member: str | None = None,
        logger: Any = None,
    ) -> None:
        if not isinstance(event_storage, BaseEventStorage):
            msg = f"event_storage must be a BaseEventStorage, got {type(event_storage).__name__}"
            raise ConfigurationError(msg, setting="event_storage", value=event_storage)
        if not isinstance(name, str) or not name.strip():
            msg = f"name must be a non-empty string, got {name!r}"
            raise ConfigurationError(msg, setting="name", value=name)
        self.event_storage = event_storage
        self.name = name
        self.batch_size = positive_int("batch_size", batch_size)
        self.max_handler_attempts = positive_int("max_handler_attempts", max_handler_attempts)
        self.idle_timeout = positive_seconds("idle_timeout", idle_timeout)
        self.consumer = Consumer(name, member or f"{socket.gethostname()}-{os.getpid()}")
        self._log = logger if logger is not None else structlog.get_logger("omniq_observe")
        self._set_up()

    def _set_up(self) -> None:
        """What a processor builds on its checked settings."""
        raise NotImplementedError


class AsyncEventProcessor(_ProcessorSettings):
    """Runs registered handlers on stored events, after a durable named checkpoint.

    Args:
        event_storage: the storage to read.
        name: the processor (consumer group) name; its checkpoint is kept under it.
        batch_size: the most events read and acknowledged at once.
        max_handler_attempts: how often a failing handler is tried on one event before
            the event is dead-lettered for that handler and skipped.
        idle_timeout: the longest one wait for new events lasts before re-checking.
        member: this process's name within the group (default: host and pid).
        logger: a structlog logger for handler failures (default: ``structlog.get_logger``).

    Raises:
        ConfigurationError: a setting is invalid.
    """

    def _set_up(self) -> None:
        self.stats = ProcessorStats()
        #: The task pairings this processor's handlers share, by (ttl, reorder window).
        self.pairings: dict[tuple[float, float], Any] = {}
        #: The span its TracingHandler drew last, for the handlers registered after it.
        self.task_spans = TaskSpans()
        self._resume_checked = False
        self._dispatch = Dispatcher(self, self._log)
        self._checkpoint = PairingCheckpoint(self.event_storage, self.name, self.batch_size)
        self._stopping: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None
        self._task: asyncio.Task[Any] | None = None

    def register_handler(
        self,
        handler: Callable[[TaskEvent], Any],
        event_types: Iterable[str | EventType] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        """Add a handler; handlers run in registration order for each event.

        Args:
            handler: a sync or async callable taking a :class:`TaskEvent`.
            event_types: only these types reach the handler (``None``: all).
            name: the handler's name in logs and metrics (default: its ``name``
                attribute or qualified name).

        Raises:
            ConfigurationError: ``handler`` is not callable or ``event_types`` is invalid.
        """
        self._dispatch.register(handler, event_types, name)
        attach = getattr(handler, "attach", None)
        if callable(attach):
            attach(self)

    @property
    def handler_names(self) -> list[str]:
        """The registered handlers' names, in order."""
        return [r.name for r in self._dispatch.registrations]

    async def process_events_once(self) -> int:
        """Handle every event after the committed position, commit, and return the count.

        A one-shot run: when it returns, the pairs that waited for the reorder window are
        decided (as when :meth:`start` stops), since no more events come in this run.

        Raises:
            StorageError: reading or committing failed (handler failures never raise).
        """
        count = await self._run_batches(None)
        await self._release(math.inf)
        return count

    async def _release(self, now: float) -> None:
        """Hand what the shared pairings decide at wall-clock ``now`` to their handlers,
        and keep what still waits (see ``omniq_observe.events._checkpoint``)."""
        if not self.pairings:
            return
        decided = self._dispatch.run_released(self.pairings.values(), now) > 0
        if decided or self._checkpoint.holding:
            await self._checkpoint.save(self.pairings.values(), decided)

    async def _run_batches(self, stopping: asyncio.Event | None) -> int:
        """Handle batches until one comes back short (or ``stopping`` is set).

        On backends with ``read_ahead`` the next batch is read while this one is handled.
        """
        storage, limit, stats = self.event_storage, self.batch_size, self.stats
        total = 0
        if not self._resume_checked:
            await self._check_resumed()
        batch = await storage.claim(self.consumer, limit)
        while True:
            stats.heartbeat = time.monotonic()
            if not batch:
                stats.caught_up = True
                await self._release(time.time())
                return total
            full = len(batch) >= limit and (stopping is None or not stopping.is_set())
            if full:
                stats.caught_up = False  # more may follow: a backlog until a short read
            ahead: asyncio.Future[list[StoredEvent]] | None = None
            if full and storage.read_ahead:
                ahead = asyncio.ensure_future(storage.read_after(batch[-1].position, limit))
            try:
                total += await self._handle_batch(batch)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                    await asyncio.gather(ahead, return_exceptions=True)
                raise
            if not full:
                stats.caught_up = len(batch) < limit
                if stats.caught_up:
                    await self._release(time.time())
                return total
            if ahead is not None:
                batch = await ahead
            else:
                batch = await storage.claim(self.consumer, limit)

    async def _check_resumed(self) -> None:
        """Tell the shared pairings when a previous run committed a position (a restart):
        tasks begun before it read their history, and what the reorder window held when
        that run ended is paired again."""
        self._resume_checked = True
        if not self.pairings:
            return
        committed = await self.event_storage.get_position(self.name)
        if committed is not None:
            for shared in self.pairings.values():
                shared.pairing.resume()
            await self._checkpoint.restore(self.pairings.values(), committed)

    async def _handle_batch(self, batch: list[StoredEvent]) -> int:
        """Run the handlers on every event of ``batch`` in order, then acknowledge it;
        return how many events the handlers saw (undecodable entries are skipped).

        On backends with leases the batch's lease is renewed while the handlers run.
        """
        stats, pairings = self.stats, self.pairings
        undecodable = stats.undecodable
        if pairings:
            self._checkpoint.begin(pairings.values(), batch)
        if self.event_storage.lease_seconds is None:
            await self._dispatch.run(batch)
        else:
            with LeaseRenewal(self.event_storage, self.consumer, batch, self._renew_failed):
                await self._dispatch.run(batch)
        if pairings:
            await self._checkpoint.save(pairings.values())
        await self.event_storage.ack(self.consumer, batch)
        self._checkpoint.acked(batch[-1].position)
        handled = len(batch) - (stats.undecodable - undecodable)
        stats.processed += handled
        stats.batches += 1
        if type(batch[-1]) is not UndecodableEvent:
            stats.last_event_timestamp = batch[-1].event.timestamp.timestamp()
        else:  # a stand-in's time (1970) is no event time: take the last real event's
            for stored in reversed(batch):
                if type(stored) is not UndecodableEvent:
                    stats.last_event_timestamp = stored.event.timestamp.timestamp()
                    break
        stats.heartbeat = time.monotonic()
        return handled

    def _renew_failed(self, exc: Exception) -> None:
        self.stats.storage_errors += 1
        self._log.warning(
            "omniq.lease_renew_failed", processor=self.name, error=f"{type(exc).__name__}: {exc}"
        )

    async def start(self) -> None:
        """Process events until :meth:`stop` or cancellation.

        Between batches it waits for new events (on SQLite and memory it notices one
        within ~10 ms); storage failures are logged, counted and retried with backoff.

        Raises:
            RuntimeError: the processor is already running.
        """
        if self.stats.running:
            msg = f"processor {self.name!r} is already running"
            raise RuntimeError(msg)
        self._stopping = stopping = asyncio.Event()
        self._finished = finished = asyncio.Event()
        self._task = asyncio.current_task()
        self.stats.running = True
        backoff = 0.05
        try:
            while not stopping.is_set():
                try:
                    await self._run_batches(stopping)
                    backoff = 0.05
                except Exception as exc:
                    self.stats.storage_errors += 1
                    self._log.error(
                        "omniq.processor_storage_error",
                        processor=self.name,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    await _wait_or_stop(asyncio.sleep(backoff), stopping)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if not stopping.is_set():
                    await _wait_or_stop(
                        self.event_storage.wait_for_events(self.consumer, self.idle_timeout),
                        stopping,
                    )
                    self.stats.heartbeat = time.monotonic()
        finally:
            self.stats.running = False
            try:
                await self._finish()
            finally:
                finished.set()

    async def _finish(self) -> None:
        """Decide what waits for the reorder window, and give up the claimed events."""
        try:
            await self._release(math.inf)
        except Exception as exc:  # (the checkpoint: the next run pairs them again)
            self._log.warning("omniq.checkpoint_failed", processor=self.name, error=str(exc))
        try:
            await self.event_storage.release(self.consumer)
        except Exception as exc:
            self._log.warning("omniq.release_failed", processor=self.name, error=str(exc))

    async def stop(self) -> None:
        """Ask :meth:`start` to finish the batch in flight and commit it; wait until it has.

        Called from a handler (inside :meth:`start`), it only asks and returns at once.
        """
        stopping, finished = self._stopping, self._finished
        if stopping is None or finished is None:
            return
        stopping.set()
        if asyncio.current_task() is not self._task:
            await finished.wait()


async def _wait_or_stop(awaitable: Awaitable[Any], stopping: asyncio.Event) -> None:
    """Wait for ``awaitable`` unless ``stopping`` is set first (then cancel it)."""
    waiter = asyncio.ensure_future(awaitable)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, stop):
            if not task.done():
                task.cancel()
        await asyncio.gather(waiter, stop, return_exceptions=True)


class EventProcessor(_ProcessorSettings):
    """A blocking wrapper around :class:`AsyncEventProcessor`, usable from any thread.

    Takes the arguments of :class:`AsyncEventProcessor` (``event_storage``, ``name``,
    ``batch_size``, ``max_handler_attempts``, ``idle_timeout``, ``member``, ``logger``),
    described there, and raises what it raises.
    """

    def _set_up(self) -> None:
        self._async = AsyncEventProcessor(
            self.event_storage,
            self.name,
            batch_size=self.batch_size,
            max_handler_attempts=self.max_handler_attempts,
            idle_timeout=self.idle_timeout,
            member=self.consumer.member,
            logger=self._log,
        )
        self._loop = LoopThread("omniq-processor")

    @property
    def stats(self) -> ProcessorStats:
        """What the processor has done."""
        return self._async.stats

    def register_handler(
        self,
        handler: Callable[[TaskEvent], Any],
        event_types: Iterable[str | EventType] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        """Add a handler (sync, or async: it then runs on the processor's loop)."""
        self._async.register_handler(handler, event_types, name=name)

    def process_events_once(self) -> int:
        """Handle every event after the committed position, commit, and return the count."""
        return self._loop.run(self._async.process_events_once())

    def start(self) -> None:
        """Process events until :meth:`stop` is called from another thread."""
        self._loop.run(self._async.start())

    def stop(self) -> None:
        """Ask :meth:`start` to finish its batch, commit and return."""
        if self._loop.running:
            self._loop.run(self._async.stop())

    def close(self) -> None:
        """Stop processing and the loop thread. Idempotent."""
        self.stop()
        self._loop.stop()

    def __enter__(self) -> EventProcessor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
