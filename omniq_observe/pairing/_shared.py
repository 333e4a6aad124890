"""One :class:`TaskPairing` per processor and settings, shared by the handlers that need
pairs, and :class:`PairedHandler`, the base class that gives a handler its share.

Handlers run one after another on each event, so the first handler to see an event pairs
it and the next ones get the same :class:`Observation` (pairing twice would cost twice
and, for duplicates, give different answers). The processor owns the shared pairings
(``processor.pairings``); handlers not attached to a processor get pairings of their own.

A handler alone on its pairing has nothing to share: its calls skip the bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Any

from omniq_observe._validate import non_negative_seconds, positive_seconds
from omniq_observe.models.event import TaskEvent
from omniq_observe.pairing._pairing import TaskPairing
from omniq_observe.pairing._types import History, Observation

__all__ = ["PairedHandler", "SharedPairing", "shared_pairing"]


class SharedPairing:
    """A pairing that remembers the observation of the event it saw last.

    Each handler gets that observation once; a handler seeing the same event
    object again (the same event delivered twice, or the processor retrying the handler)
    pairs it anew, and the pairing calls it a duplicate.

    Args:
        history: the task-history reader for recovery (``storage.task_history``).
        ttl: seconds of event time before an unfinished attempt expires.
        reorder_window: seconds of event time an event may come late and pair exactly.
    """

    __slots__ = ("_event", "_given_to", "_last", "_obs", "_only_handler", "handlers", "pairing")

    def __init__(self, history: History | None, ttl: float, reorder_window: float = 10.0) -> None:
        self.pairing = TaskPairing(history, ttl=ttl, reorder_window=reorder_window)
        self._event: TaskEvent | None = None
        self._obs: Observation | None = None
        self._given_to: tuple[object, ...] = ()  # the handlers given _obs already
        self.handlers: list[Any] = []  # the handlers reading this pairing, in order
        # The handler reading this pairing while it is the only one, and what it got last.
        self._only_handler: object | None = None
        self._last: Observation | None = None

    def join(self, handler: object) -> None:
        """Count ``handler`` among the handlers reading this pairing."""
        self.handlers.append(handler)
        if len(self.handlers) == 1:
            self._only_handler = handler
        elif self._only_handler is not None:
            # The only handler skipped the bookkeeping: hand over the observation it took
            # last, so that a handler joining in the middle of an event still gets it, once.
            last = self._last
            if last is not None:
                self._event, self._obs = last.event, last
                self._given_to = (self._only_handler,)
            self._only_handler = None

    def try_observe(self, event: TaskEvent, handler: object) -> Observation | None:
        """The observation of ``event`` for ``handler`` if it needs no storage read,
        else None."""
        if handler is self._only_handler:  # nothing to share
            obs = self._last = self.pairing.try_observe(event)
            return obs
        if event is self._event and handler not in self._given_to:
            self._given_to += (handler,)
            return self._obs
        obs = self.pairing.try_observe(event)
        if obs is not None:
            self._event, self._obs, self._given_to = event, obs, (handler,)
        return obs

    async def observe(self, event: TaskEvent, handler: object) -> Observation:
        """The observation of ``event`` for ``handler``, reading storage history when
        needed."""
        if event is self._event and self._obs is not None and handler not in self._given_to:
            self._given_to += (handler,)
            return self._obs
        obs = self._last = await self.pairing.observe(event)
        self._event, self._obs, self._given_to = event, obs, (handler,)
        return obs

    def release(self, now: float) -> list[Observation]:
        """What waited for the reorder window and is decided at wall-clock ``now`` (the
        processor calls this when it has caught up); each handler must handle them."""
        return self.pairing.release(now)


def shared_pairing(
    processor: Any, ttl: float, handler: object, reorder_window: float = 10.0
) -> SharedPairing:
    """Return the pairing ``processor`` shares among its handlers with these settings,
    with ``handler`` counted among its handlers."""
    pairings = getattr(processor, "pairings", None)
    if not isinstance(pairings, dict):
        pairings = {}
    shared = pairings.get((ttl, reorder_window))
    if shared is None:
        storage = getattr(processor, "event_storage", None)
        history = getattr(storage, "task_history", None)
        shared = pairings[(ttl, reorder_window)] = SharedPairing(history, ttl, reorder_window)
    shared.join(handler)
    return shared


class PairedHandler:
    """Base class of handlers that need pairs (durations, queue waits, attempts).

    Subclass it and override :meth:`handle`: it is called with the
    :class:`Observation` of every event, and with every observation decided later (see
    ``Observation.released``). Register the handler on a processor: :meth:`attach` gives
    it the pairing the processor shares among its pairing handlers (which reads the
    storage's task history when it must), so each event is paired once.

    Args:
        ttl: seconds (event time) after a task's last event that it is given up.
        reorder_window: seconds of event time an event may arrive late and pair exactly.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    name = "paired"

    def __init__(self, *, ttl: float = 3600.0, reorder_window: float = 10.0) -> None:
        self.ttl = positive_seconds("ttl", ttl, infinite=True)
        self.reorder_window = non_negative_seconds("reorder_window", reorder_window)
        self._pairing = SharedPairing(None, self.ttl, self.reorder_window)
        self._pairing.join(self)

    @property
    def pairing(self) -> TaskPairing:
        """The task pairing this handler reads (shared with the processor's other handlers)."""
        return self._pairing.pairing

    def attach(self, processor: Any) -> None:
        """Called by ``register_handler``: share the processor's pairing."""
        self._pairing = shared_pairing(processor, self.ttl, self, self.reorder_window)

    def __call__(self, event: TaskEvent) -> Awaitable[None] | None:
        """Pair one event and handle what it decided; returns an awaitable only when
        storage must be read."""
        obs = self._pairing.try_observe(event, self)
        if obs is None:
            return self._handle_later(event)
        self.handle(obs)
        for other in obs.released:
            self.handle(other)
        return None

    async def _handle_later(self, event: TaskEvent) -> None:
        obs = await self._pairing.observe(event, self)
        self.handle(obs)
        for other in obs.released:
            self.handle(other)

    def release(self, now: float = math.inf) -> None:
        """Decide what waits for the reorder window at wall-clock ``now`` (default: no
        more events are coming) and handle it. A processor does this by itself whenever it
        has caught up, and when it stops; call it when feeding the handler by hand."""
        for obs in self._pairing.release(now):
            for handler in self._pairing.handlers:
                handler.handle(obs)

    def handle(self, obs: Observation) -> None:
        """Handle one observation (override it; the base does nothing)."""
