"""One :class:`TaskPairing` per processor, shared by the handlers that need the same pairs.

Handlers run one after another on each event, so the first handler to see an event pairs
it and the next ones get the same :class:`Observation` (pairing twice would cost twice
and, for duplicates, give different answers). Handlers with different TTLs, or not
attached to a processor, get pairings of their own.

A handler alone on its pairing has nothing to share: when it joined by name and
:attr:`SharedPairing.sole` is that handler, it may call ``pairing.try_observe`` directly,
without the bookkeeping (about a seventh of the pairing's cost per event), storing what
it got in :attr:`SharedPairing.last`.
"""

from __future__ import annotations

import weakref
from typing import Any

from omniq_observe._pairing import History, Observation, TaskPairing
from omniq_observe.models.event import TaskEvent

__all__ = ["SharedPairing", "shared_pairing"]

_BY_PROCESSOR: weakref.WeakKeyDictionary[Any, dict[float, SharedPairing]] = (
    weakref.WeakKeyDictionary()
)


class SharedPairing:
    """A pairing that remembers the observation of the event it saw last.

    Each handler (``who``) gets that observation once; a handler seeing the same event
    object again (the same event delivered twice, or the processor retrying the handler)
    pairs it anew, and the pairing calls it a duplicate.

    Args:
        history: the task-history reader for recovery (``storage.task_history``).
        ttl: seconds of event time before an unfinished attempt expires.
    """

    __slots__ = ("_event", "_obs", "_served", "_users", "last", "pairing", "sole")

    def __init__(self, history: History | None, ttl: float) -> None:
        self.pairing = TaskPairing(history, ttl=ttl)
        self._event: TaskEvent | None = None
        self._obs: Observation | None = None
        self._served: tuple[object, ...] = ()  # the handlers given _obs already
        self._users = 0
        #: The one handler reading this pairing, when it joined by name; it may then take
        #: observations straight from ``pairing.try_observe``, and stores each in ``last``.
        self.sole: object | None = None
        self.last: Observation | None = None

    def join(self, who: object | None = None) -> None:
        """Count one more handler reading this pairing; ``who``: that handler, if it takes
        observations straight from the pairing while it is :attr:`sole`."""
        self._users += 1
        if self._users == 1:
            self.sole = who
        elif self.sole is not None:
            # The sole handler skipped the bookkeeping: hand over the observation it took
            # last, so that a handler joining in the middle of an event still gets it, once.
            last = self.last
            if last is not None:
                self._event, self._obs, self._served = last.event, last, (self.sole,)
            self.sole = None

    def try_observe(self, event: TaskEvent, who: object) -> Observation | None:
        """The observation of ``event`` for handler ``who`` if it needs no storage read,
        else None."""
        if event is self._event and who not in self._served:
            self._served += (who,)
            return self._obs
        obs = self.pairing.try_observe(event)
        if obs is not None:
            self._event, self._obs, self._served = event, obs, (who,)
        return obs

    async def observe(self, event: TaskEvent, who: object) -> Observation:
        """The observation of ``event`` for handler ``who``, reading storage history when
        needed."""
        if event is self._event and self._obs is not None and who not in self._served:
            self._served += (who,)
            return self._obs
        obs = self.last = await self.pairing.observe(event)
        self._event, self._obs, self._served = event, obs, (who,)
        return obs


def shared_pairing(processor: Any, ttl: float, who: object | None = None) -> SharedPairing:
    """Return the pairing shared by the handlers of ``processor`` with this ``ttl``, and
    count the caller among its handlers (``who``: see :meth:`SharedPairing.join`)."""
    by_ttl = _BY_PROCESSOR.get(processor)
    if by_ttl is None:
        by_ttl = _BY_PROCESSOR[processor] = {}
    shared = by_ttl.get(ttl)
    if shared is None:
        storage = getattr(processor, "event_storage", None)
        history = getattr(storage, "task_history", None)
        shared = by_ttl[ttl] = SharedPairing(history, ttl)
    shared.join(who)
    return shared
