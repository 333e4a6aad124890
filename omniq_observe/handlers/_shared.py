"""One :class:`TaskPairing` per processor, shared by the handlers that need the same pairs.

Handlers run one after another on each event, so the first handler to see an event pairs
it and the next ones get the same :class:`Observation` (pairing twice would cost twice
and, for duplicates, give different answers). Handlers with different TTLs, or not
attached to a processor, get pairings of their own.

A handler alone on its pairing has nothing to share: its calls skip the bookkeeping
(about a seventh of the pairing's cost per event).
"""

from __future__ import annotations

import weakref
from typing import Any

from omniq_observe._pairing import History, Observation, TaskPairing
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import TaskEvent

__all__ = ["SharedPairing", "checked_ttl", "shared_pairing"]

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

    __slots__ = ("_event", "_last", "_obs", "_served", "_sole", "_users", "pairing")

    def __init__(self, history: History | None, ttl: float) -> None:
        self.pairing = TaskPairing(history, ttl=ttl)
        self._event: TaskEvent | None = None
        self._obs: Observation | None = None
        self._served: tuple[object, ...] = ()  # the handlers given _obs already
        self._users = 0
        # The one handler reading this pairing while it is alone, and what it got last.
        self._sole: object | None = None
        self._last: Observation | None = None

    def join(self, who: object) -> None:
        """Count handler ``who`` among the handlers reading this pairing."""
        self._users += 1
        if self._users == 1:
            self._sole = who
        elif self._sole is not None:
            # The sole handler skipped the bookkeeping: hand over the observation it took
            # last, so that a handler joining in the middle of an event still gets it, once.
            last = self._last
            if last is not None:
                self._event, self._obs, self._served = last.event, last, (self._sole,)
            self._sole = None

    def try_observe(self, event: TaskEvent, who: object) -> Observation | None:
        """The observation of ``event`` for handler ``who`` if it needs no storage read,
        else None."""
        if who is self._sole:  # alone on this pairing: nothing to share
            obs = self._last = self.pairing.try_observe(event)
            return obs
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
        obs = self._last = await self.pairing.observe(event)
        self._event, self._obs, self._served = event, obs, (who,)
        return obs


def shared_pairing(processor: Any, ttl: float, who: object) -> SharedPairing:
    """Return the pairing shared by the handlers of ``processor`` with this ``ttl``, with
    handler ``who`` counted among its handlers."""
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


def checked_ttl(ttl: object) -> float:
    """A handler's ``ttl`` setting as seconds.

    Raises:
        ConfigurationError: ``ttl`` is not a positive number.
    """
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not ttl > 0:
        msg = f"ttl must be a positive number of seconds, got {ttl!r}"
        raise ConfigurationError(msg, setting="ttl", value=ttl)
    return float(ttl)
