"""Handler registration and dispatch for :mod:`omniq_observe.events.processor`.

Handlers run in registration order on each event of a batch whose type they take. A
handler that raises is tried again up to the processor's ``max_handler_attempts``; each
failed attempt is logged (``omniq.handler_failed``) and counted in
``stats.handler_errors``, then the event is dead-lettered for that handler and the next
handler runs. Handler failures never propagate.

A stored entry that did not decode (an :class:`UndecodableEvent` in the batch) reaches no
handler: it is logged (``omniq.undecodable_event``), counted in ``stats.undecodable`` and
dead-lettered with its raw bytes, and the batch goes on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from omniq_observe.backend.base import (
    BaseEventStorage,
    DeadLetter,
    StoredEvent,
    UndecodableEvent,
)
from omniq_observe.events._stats import ProcessorStats
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import EventType, TaskEvent

__all__ = ["Dispatcher", "Owner", "Registration"]


class Owner(Protocol):
    """What the dispatcher reads of its processor when a handler fails (the processor's
    settings may change after it was made, so they are read then, not copied)."""

    name: str
    stats: ProcessorStats
    event_storage: BaseEventStorage
    max_handler_attempts: int


@dataclass(slots=True)
class Registration:
    """One registered handler: the callable, its name, the event types it takes."""

    handler: Callable[[TaskEvent], Any]
    name: str
    types: frozenset[str] | None
    is_async: bool


def _handler_name(handler: Any) -> str:
    name = getattr(handler, "name", None)
    if isinstance(name, str) and name:
        return name
    qualname = getattr(handler, "__qualname__", None)
    return qualname if isinstance(qualname, str) else type(handler).__name__


def _event_types(event_types: Iterable[str | EventType] | None) -> frozenset[str] | None:
    """The upper-case type names of ``event_types`` (``None``: all types).

    Raises:
        ConfigurationError: a type is not a non-empty string.
    """
    if event_types is None:
        return None
    if isinstance(event_types, str):
        event_types = [event_types]
    normalized = set()
    for t in event_types:
        if not isinstance(t, str) or not t.strip():
            msg = f"event_types must hold non-empty strings, got {t!r}"
            raise ConfigurationError(msg, setting="event_types", value=t)
        normalized.add(str(t.value if isinstance(t, EventType) else t).strip().upper())
    return frozenset(normalized)


class Dispatcher:
    """The handlers of one processor, and how they run on its batches.

    Args:
        processor: the processor; its ``name``, ``stats``, ``event_storage`` and
            ``max_handler_attempts`` are read when a handler fails.
        log: the structlog logger for handler failures.
    """

    def __init__(self, processor: Owner, log: Any) -> None:
        self._processor = processor
        self._log = log
        self.registrations: list[Registration] = []

    def register(
        self,
        handler: Callable[[TaskEvent], Any],
        event_types: Iterable[str | EventType] | None,
        name: str | None,
    ) -> None:
        """Add ``handler`` after the others (see ``AsyncEventProcessor.register_handler``).

        Raises:
            ConfigurationError: ``handler`` is not callable or ``event_types`` is invalid.
        """
        if not callable(handler):
            msg = f"handler must be callable, got {type(handler).__name__}"
            raise ConfigurationError(msg, setting="handler", value=handler)
        types = _event_types(event_types)
        call = getattr(handler, "__call__", handler)  # noqa: B004 - objects with async __call__
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)
        registration = Registration(handler, name or _handler_name(handler), types, is_async)
        self.registrations.append(registration)

    async def run(self, batch: list[StoredEvent]) -> None:
        """Run the handlers on every event of ``batch`` in order; never raises for them."""
        handlers = self.registrations
        for stored in batch:
            if type(stored) is UndecodableEvent:
                await self._dead_letter_undecodable(stored)
                continue
            event = stored.event
            event_type = event.event_type
            for reg in handlers:
                if reg.types is not None and event_type not in reg.types:
                    continue
                try:
                    if reg.is_async:
                        await reg.handler(event)
                    else:
                        result = reg.handler(event)
                        if result is not None and inspect.isawaitable(result):
                            await result
                except Exception as exc:
                    await self._retry_or_dead_letter(reg, stored, exc)

    def run_released(self, pairings: Iterable[Any], now: float) -> int:
        """Hand what the shared pairings decide at wall-clock ``now`` (the processor has
        caught up) to their handlers; never raises for them. Returns how many
        observations were decided."""
        names = {id(reg.handler): reg.name for reg in self.registrations}
        decided = 0
        for shared in pairings:
            released = shared.release(now)
            decided += len(released)
            for handler in shared.handlers if released else ():
                try:
                    for obs in released:
                        handler.handle(obs)
                except Exception as exc:
                    name = names.get(id(handler), _handler_name(handler))
                    self._processor.stats.handler_errors[name] += 1
                    self._log.error("omniq.handler_failed", processor=self._processor.name,
                                    handler=name, error=f"{type(exc).__name__}: {exc}")
        return decided

    async def _retry_or_dead_letter(
        self, reg: Registration, stored: StoredEvent, first_error: Exception
    ) -> None:
        processor = self._processor
        error: Exception = first_error
        for attempt in range(1, processor.max_handler_attempts + 1):
            if attempt > 1:
                try:
                    result = reg.handler(stored.event)
                    if result is not None and inspect.isawaitable(result):
                        await result
                    return
                except Exception as exc:
                    error = exc
            processor.stats.handler_errors[reg.name] += 1
            self._log.error(
                "omniq.handler_failed",
                processor=processor.name,
                handler=reg.name,
                event_id=stored.event.event_id,
                task_id=stored.event.task_id,
                event_type=stored.event.event_type,
                attempt=attempt,
                error=f"{type(error).__name__}: {error}",
            )
        dead = DeadLetter(
            group=processor.name,
            handler=reg.name,
            error=f"{type(error).__name__}: {error}",
            attempts=processor.max_handler_attempts,
            event=stored.event,
            position=stored.position,
        )
        await self._record(dead)

    async def _dead_letter_undecodable(self, stored: UndecodableEvent) -> None:
        processor = self._processor
        processor.stats.undecodable += 1
        self._log.error(
            "omniq.undecodable_event",
            processor=processor.name,
            position=stored.position,
            error=stored.error,
            raw=stored.raw[:200],
        )
        error = f"undecodable: {stored.error}"
        await self._record(
            DeadLetter(processor.name, "(decode)", error, 0, stored.event, stored.position,
                       stored.raw)
        )

    async def _record(self, dead: DeadLetter) -> None:
        processor = self._processor
        processor.stats.dead_lettered += 1
        try:
            await processor.event_storage.record_dead_letter(dead)
        except Exception as exc:  # telemetry must not stop the loop
            processor.stats.storage_errors += 1
            self._log.error("omniq.dead_letter_failed", processor=processor.name, error=str(exc))
