"""The storage contract every backend follows: :class:`BaseEventStorage`.

Events form one log in a total order. Each stored event has a *position* in that log
(an ``int`` for memory, SQLite and PostgreSQL, a stream id ``str`` for Redis). Processors
are *consumer groups* named by the processor name: a group's committed position is durable,
so a restarted processor resumes after it (at-least-once delivery).

Two levels of reading:

* ``read_after(position, limit)`` + ``commit_position(group, position)``: the plain log API
  that single-node backends implement and tools (``tail``, ``check``) use.
* ``claim(consumer, limit)`` + ``ack(consumer, batch)``: what a processor calls. The default
  here is built on the plain log API (one member per group). Distributed backends override
  both so that several members of one group share the work (Redis consumer groups,
  PostgreSQL leases) and a dead member's events are taken over.

Undecodable entries: every backend decodes what it reads with :func:`decode_stored`. An
entry that does not decode (a rotted SQLite row, an entry written to Redis or PostgreSQL
behind the library's back) never raises from ``claim``/``read_after``: it comes back in its
place as an :class:`UndecodableEvent` carrying its raw bytes, so that it is acknowledged
with its batch. A processor dead-letters it (``DeadLetter.raw``), counts it and moves on.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, overload

import msgspec

from omniq_observe._validate import optional_non_negative_int
from omniq_observe.exceptions import InvalidEventError
from omniq_observe.models.event import TaskEvent, decode_event, encode_event, epoch_us

__all__ = [
    "BaseEventStorage",
    "Consumer",
    "DeadLetter",
    "Health",
    "Page",
    "Position",
    "StoredEvent",
    "UndecodableEvent",
    "as_utc",
    "check_prune_limit",
    "decode_stored",
    "epoch_us",
    "query_matches",
    "read_dead_letter",
]

Position = int | str
"""A place in the log: an ``int`` sequence number, or a Redis stream id."""


# A struct rather than a dataclass: built in C, and (gc=False, like TaskEvent) never
# tracked by the garbage collector, so the pages a processor reads cost no collections.
# array_like: SQLite pages decode straight from ``[[position, {event}], ...]``.
class StoredEvent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An event together with its position in the log."""

    position: Position
    event: TaskEvent


class UndecodableEvent(StoredEvent, frozen=True, array_like=True, gc=False):
    """A stored entry that does not decode to a :class:`TaskEvent`.

    ``raw`` holds its bytes as stored and ``error`` why they do not decode. Its ``event``
    is a stand-in (type ``UNDECODABLE``, task ``undecodable:<position>``, time 1970) so
    that tools listing the log can show it; processors never hand it to handlers.
    """

    raw: bytes = b""
    error: str = ""


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def decode_stored(position: Position, raw: bytes | str | None) -> StoredEvent:
    """Decode one stored entry; never raises.

    Returns:
        The event at ``position``, or an :class:`UndecodableEvent` when ``raw`` does not
        decode.
    """
    try:
        return StoredEvent(position, decode_event(raw))  # type: ignore[arg-type]
    except InvalidEventError as exc:
        return undecodable(position, raw, str(exc))


def undecodable(position: Position, raw: bytes | str | None, error: str) -> UndecodableEvent:
    """The :class:`UndecodableEvent` of the entry ``raw`` at ``position``."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw or b""
    stand_in = TaskEvent(
        task_id=f"undecodable:{position}",
        event_type="UNDECODABLE",
        timestamp=_EPOCH,
        details={"error": error[:1000], "position": str(position)},
        event_id=f"undecodable:{position}",
    )
    return UndecodableEvent(position, stand_in, bytes(data), error)


@dataclass(frozen=True, slots=True)
class Consumer:
    """One member of a consumer group. ``group`` is the processor name."""

    group: str
    member: str = "main"


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query; pass ``next_cursor`` as ``after`` to get the next page."""

    events: list[StoredEvent]
    next_cursor: Position | None


@dataclass(frozen=True, slots=True)
class Health:
    """The result of a health check."""

    ok: bool
    backend: str
    detail: str = ""
    schema_version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that a handler kept failing on, skipped after the retries ran out; or an
    entry that did not decode (``handler`` ``"(decode)"``, ``attempts`` 0, ``raw`` its
    bytes as stored and ``event`` a stand-in, see :class:`UndecodableEvent`)."""

    group: str
    handler: str
    error: str
    attempts: int
    event: TaskEvent
    position: Position
    raw: bytes | None = None

    @property
    def body(self) -> bytes:
        """What a backend stores for it: the raw bytes, else the event's wire form."""
        return self.raw if self.raw is not None else encode_event(self.event)


def read_dead_letter(
    group: str, handler: str, error: str, attempts: int, position: Position, body: bytes | str
) -> DeadLetter:
    """A :class:`DeadLetter` from what a backend stored (``body`` as :attr:`DeadLetter.body`)."""
    stored = decode_stored(position, body)
    raw = stored.raw if isinstance(stored, UndecodableEvent) else None
    return DeadLetter(group, handler, error, attempts, stored.event, position, raw)


class BaseEventStorage(abc.ABC):
    """The storage contract. Subclasses implement the abstract methods.

    Every method is a coroutine and never blocks the event loop. Failures raise
    :class:`~omniq_observe.exceptions.StorageError` (or a subclass) carrying the cause.
    Backends are async context managers; ``close()`` is idempotent.
    """

    #: Short name shown by ``check`` and health output.
    backend_name: str = "base"
    #: How often ``wait_for_events`` re-checks when the backend cannot be woken.
    poll_interval: float = 0.01
    #: True when ``claim`` is the plain "read after the group's committed position" (one
    #: member per group), so a processor may read the next batch ahead with
    #: ``read_after(last position of the batch in hand)`` while it handles this one.
    #: Backends whose ``claim`` hands out work (Redis groups, PostgreSQL leases) keep False.
    read_ahead: bool = False
    #: Seconds a claimed batch stays with its member before another member may take it
    #: over, on backends that share work (``None``: batches are never taken over). A
    #: processor calls ``renew`` every third of this while its handlers run.
    lease_seconds: float | None = None

    #: True when :meth:`append_blocking` is implemented.
    can_append_blocking: bool = False

    # -- writing -----------------------------------------------------------------------
    @abc.abstractmethod
    async def append(self, events: Sequence[TaskEvent]) -> None:
        """Store a batch of events durably, in order; return once they are visible."""

    def append_blocking(self, events: Sequence[TaskEvent]) -> None:
        """Store events as :meth:`append` does, from sync code, without an event loop.

        Optional. A backend that can write from any thread without a loop implements it
        and sets :attr:`can_append_blocking`; the sync ``EventLogger`` then writes in the
        caller's thread instead of through its private loop thread. Failures raise as
        ``append``'s do.

        Raises:
            NotImplementedError: the backend does not implement it (the default).
        """
        msg = f"{type(self).__name__} has no append_blocking; use append"
        raise NotImplementedError(msg)

    # -- the log -----------------------------------------------------------------------
    @abc.abstractmethod
    async def read_after(self, position: Position | None, limit: int) -> list[StoredEvent]:
        """Return up to ``limit`` events after ``position`` (``None``: from the start)."""

    @abc.abstractmethod
    async def commit_position(self, group: str, position: Position) -> None:
        """Durably record that ``group`` has handled everything up to ``position``."""

    @abc.abstractmethod
    async def get_position(self, group: str) -> Position | None:
        """Return the committed position of ``group``, or ``None`` if it never committed."""

    async def positions(self) -> dict[str, Position]:
        """Return every group's committed position (for ``check``)."""
        return {}

    async def last_position(self) -> Position | None:
        """Return the position of the newest event, or ``None`` when empty."""
        raise NotImplementedError

    # -- processors --------------------------------------------------------------------
    async def claim(self, consumer: Consumer, limit: int) -> list[StoredEvent]:
        """Hand ``consumer`` the next events of its group that no other member holds."""
        position = await self.get_position(consumer.group)
        return await self.read_after(position, limit)

    async def ack(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        """Mark a claimed batch handled; the group's position moves past it."""
        if batch:
            await self.commit_position(consumer.group, batch[-1].position)

    async def renew(  # noqa: B027 - optional hook
        self, consumer: Consumer, batch: Sequence[StoredEvent]
    ) -> None:
        """Keep the batch ``consumer`` claimed last its own for another ``lease_seconds``."""

    async def release(self, consumer: Consumer) -> None:  # noqa: B027 - optional hook
        """Give up what ``consumer`` holds (on stop), so other members can take it at once."""

    async def wait_for_events(self, consumer: Consumer, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for events ``consumer`` could claim.

        Returns True when there may be events. The default polls ``has_events_for``
        every ``poll_interval``; backends that can be woken (NOTIFY, blocking reads)
        override it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if await self.has_events_for(consumer):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(self.poll_interval, remaining))

    async def has_events_for(self, consumer: Consumer) -> bool:
        """Return True when ``consumer``'s group has events after its position."""
        position = await self.get_position(consumer.group)
        last = await self.last_position()
        return last is not None and (position is None or _position_after(last, position))

    async def record_dead_letter(self, dead: DeadLetter) -> None:
        """Keep a dead-lettered event so that it can be inspected later."""
        self._dead_letters().append(dead)

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        """Return the dead-lettered events, of one group or of all."""
        return [d for d in self._dead_letters() if group is None or d.group == group]

    def _dead_letters(self) -> list[DeadLetter]:
        store: list[DeadLetter] | None = getattr(self, "_dead_letter_list", None)
        if store is None:
            store = []
            self._dead_letter_list = store
        return store

    # -- queries -----------------------------------------------------------------------
    @abc.abstractmethod
    async def task_history(self, task_id: str, limit: int = 1000) -> list[TaskEvent]:
        """Return the events of one task in log order (the oldest ``limit``)."""

    @abc.abstractmethod
    async def query(
        self,
        *,
        event_types: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after: Position | None = None,
    ) -> Page:
        """Return events in log order filtered by type and/or ``since <= timestamp < until``.

        Pagination is by cursor: pass the returned ``next_cursor`` as ``after``.
        ``next_cursor`` is ``None`` on the last page.
        """

    @abc.abstractmethod
    async def count(self) -> int:
        """Return how many events are stored."""

    @abc.abstractmethod
    async def prune(
        self, *, older_than: datetime | None = None, max_events: int | None = None
    ) -> int:
        """Delete events with ``timestamp < older_than`` and/or all but the newest
        ``max_events``; return how many were deleted."""

    @abc.abstractmethod
    async def health(self) -> Health:
        """Check that the backend answers; never raises."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads. Idempotent."""

    async def __aenter__(self) -> BaseEventStorage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """Return ``value`` as an aware UTC datetime (naive means UTC); ``None`` stays ``None``."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def query_matches(
    event: TaskEvent, types: set[str] | None, since: datetime | None, until: datetime | None
) -> bool:
    """Whether ``event`` passes ``query``'s filters (upper-cased types, UTC datetimes)."""
    if types is not None and event.event_type not in types:
        return False
    if since is not None and event.timestamp < since:
        return False
    return until is None or event.timestamp < until


def check_prune_limit(max_events: int | None) -> None:
    """Refuse a ``prune(max_events=...)`` that is not ``None`` or an integer >= 0.

    Raises:
        ConfigurationError: ``max_events`` is negative or not an integer.
    """
    optional_non_negative_int("max_events", max_events)


def _position_after(a: Position, b: Position) -> bool:
    """Return True when log position ``a`` comes after ``b`` (ints, or Redis ``ms-seq``
    stream ids)."""
    if isinstance(a, int) and isinstance(b, int):
        return a > b
    return _stream_key(str(a)) > _stream_key(str(b))


def _stream_key(position: str) -> tuple[int, int]:
    ms, _, seq = position.partition("-")
    return int(ms), int(seq or 0)
