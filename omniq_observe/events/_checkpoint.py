"""What the reorder window holds, kept across a crash, for :mod:`omniq_observe.events.processor`.

A processor commits its position once its handlers ran on a batch, but the pairs that
wait for the reorder window (an attempt ended by RETRIED, whose FAILED may still come; a
count whose queue label is not known yet) live in memory. A processor killed then
(SIGKILL, out of memory) would lose them: its restart reads after the committed position.
So while anything waits, the processor keeps two more positions under its name:

* ``<name>~held``: the position before the oldest batch holding an event whose pair or
  count is not decided yet;
* ``<name>~clock``: the time (epoch microseconds) the pairings have decided up to (the
  newest event time, or the wall clock of the last release); ``0`` when nothing waits.

They are written after the handlers ran on a batch and before it is acknowledged, and
after a wall-clock release decided something. A restarted processor reads the events
after ``~held`` up to its committed position and pairs them again, silently: the handlers
saw them before the crash. Pairs decided by ``~clock`` were handed out then and are not
again; the ones that waited wait again, and reach the handlers when they are decided.
No event is counted twice. The task histories read meanwhile stop at the committed
position, as they did before the crash.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from omniq_observe.backend.base import (
    BaseEventStorage,
    Position,
    UndecodableEvent,
    _position_after,
)
from omniq_observe.models.event import TaskEvent

__all__ = ["CHECKPOINT_SUFFIXES", "PairingCheckpoint"]

#: The suffixes of the extra positions a processor keeps (``check`` does not list them).
CHECKPOINT_SUFFIXES = ("~held", "~clock")

History = Callable[[str], Awaitable[list[TaskEvent]]]


class PairingCheckpoint:
    """The crash-safe state of one processor's shared pairings.

    Args:
        storage: the processor's storage.
        name: the processor name.
        page_size: how many events one read of a restart takes.
    """

    def __init__(self, storage: BaseEventStorage, name: str, page_size: int) -> None:
        self._storage = storage
        self.held_key, self.clock_key = (f"{name}{suffix}" for suffix in CHECKPOINT_SUFFIXES)
        self._page_size = page_size
        self._mark = 0
        self._marks: deque[tuple[int, Position | None]] = deque()  # (mark, position before)
        self._acked: Position | None = None  # the last position acknowledged
        self._origin: Position = 0  # the position before the first event
        self._holding = False  # the positions say that something waits
        self._saved: Position | None = None  # the ~held position written last

    def begin(self, pairings: Iterable[Any], batch: Sequence[Any]) -> None:
        """Number the batch about to be paired."""
        self._mark += 1
        for shared in pairings:
            shared.pairing.batch_mark = self._mark
        self._marks.append((self._mark, self._acked))
        if isinstance(batch[0].position, str):
            self._origin = "0-0"

    def acked(self, position: Position) -> None:
        """Say that the processor acknowledged everything up to ``position``."""
        self._acked = position

    @property
    def holding(self) -> bool:
        """True while the positions say that something waits."""
        return self._holding

    async def save(self, pairings: Iterable[Any], decided: bool = True) -> None:
        """Write the positions when something waits, or when it no longer does.

        ``decided``: whether anything was decided since the last save (else, while the
        oldest waiting batch stays the same, the positions written last still hold)."""
        pairings = list(pairings)
        marks = [m for s in pairings if (m := s.pairing.oldest_undecided_mark()) is not None]
        if not marks:
            self._marks.clear()
            if self._holding:
                await self._storage.commit_position(self.clock_key, 0)
                self._holding = False
            return
        oldest = min(marks)
        while self._marks and self._marks[0][0] < oldest:
            self._marks.popleft()
        before = self._marks[0][1] if self._marks else self._acked
        if before is None:
            before = self._origin
        if self._holding and not decided and before == self._saved:
            return
        decided_at = max(s.pairing.decided_at for s in pairings)
        await self._storage.commit_position(self.held_key, before)
        await self._storage.commit_position(self.clock_key, _micros(decided_at))
        self._holding, self._saved = True, before

    async def restore(self, pairings: Iterable[Any], committed: Position) -> None:
        """After a restart: pair again, silently, what waited when the last run ended."""
        self._acked = committed
        clock = await self._storage.get_position(self.clock_key)
        if clock is None or int(clock) <= 0:
            return
        held = await self._storage.get_position(self.held_key)
        events = await self._read_between(held, committed)
        self._mark += 1
        self._marks.append((self._mark, held))
        for shared in pairings:
            await _pair_silently(shared.pairing, events, self._mark, int(clock) / 1e6)
        self._holding = True

    async def _read_between(self, after: Position | None, through: Position) -> list[TaskEvent]:
        """The events after ``after`` up to ``through`` (undecodable ones left out)."""
        events: list[TaskEvent] = []
        while True:
            page = await self._storage.read_after(after, self._page_size)
            for stored in page:
                if _position_after(stored.position, through):
                    return events
                if type(stored) is not UndecodableEvent:
                    events.append(stored.event)
            if len(page) < self._page_size:
                return events
            after = page[-1].position


async def _pair_silently(pairing: Any, events: list[TaskEvent], mark: int, now: float) -> None:
    """Pair ``events`` again and decide by ``now``, dropping what that hands out (it was
    handed out before the crash); task histories stop at the last of ``events``."""
    history: History | None = pairing.history
    if history is not None:
        pairing.history = _histories_through(history, {e.event_id for e in events})
    pairing.batch_mark = mark
    try:
        for event in events:
            await pairing.observe(event)
        pairing.release(now)
    finally:
        pairing.history = history


def _histories_through(history: History, ids: set[str]) -> History:
    """``history`` cut after the last event among ``ids`` (later ones came after the crash)."""

    async def read(task_id: str) -> list[TaskEvent]:
        events = await history(task_id)
        last = max((i for i, e in enumerate(events) if e.event_id in ids), default=-1)
        return events[: last + 1]

    return read


def _micros(seconds: float) -> int:
    return max(1, int(seconds * 1e6)) if math.isfinite(seconds) else 1
