"""The public results of pairing (:class:`Attempt`, :class:`Observation`) and small helpers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import msgspec

from omniq_observe._details import error_type_of
from omniq_observe.models.event import TaskEvent

__all__ = ["OVERFLOW", "UNKNOWN_QUEUE", "Attempt", "History", "Observation", "TraceContext"]

_MAX_INTERNED = 0xFFFF  # names are stored as unsigned 16-bit numbers
_MAX_ATTEMPT = 0xFFFF
_EXPIRY_EVERY = 1024
UNKNOWN_QUEUE = "unknown"
OVERFLOW = "__overflow__"

History = Callable[[str], Awaitable[list[TaskEvent]]]
#: A W3C trace context kept compactly: (trace id, span id, trace flags) as integers.
TraceContext = tuple[int, int, int]


# msgspec structs, made for every event.
# gc=False: an attempt refers to strings, floats, an event (itself untracked) and a tuple of
# ints, and an observation to those and to lists of strings, attempts and observations
# made after it; none can refer back, so neither is ever part of a reference cycle.
class Attempt(msgspec.Struct, gc=False):
    """One attempt of a task: a STARTED paired with the event that ended it.

    Attributes:
        task_id: the task.
        queue: the task's queue (``"unknown"`` when no event named it).
        attempt: the attempt number (``details["attempt"]`` of the STARTED, else counted).
        worker_id: the STARTED's ``details["worker_id"]``, if any.
        start: the STARTED's event time (epoch seconds); ``None`` when no start was seen
            (status ``"no_start"``).
        end: the ending event's time; ``None`` when the attempt never ended (``"expired"``).
        status: ``completed``, ``failed``, ``timeout``, ``cancelled``, ``retried`` (ended by
            RETRIED with no terminal event before it), ``expired`` or ``no_start``.
        end_event: the event that ended the attempt, if any.
        trace_context: the task's ENQUEUED trace context as (trace id, span id, flags),
            when the pairing keeps contexts (tracing) and the ENQUEUED had one.
        was_open: an earlier :class:`Observation` reported the attempt opened (counted in
            progress), so its end must take it out again.
    """

    task_id: str
    queue: str
    attempt: int
    worker_id: str | None
    start: float | None
    end: float | None
    status: str
    end_event: TaskEvent | None = None
    trace_context: TraceContext | None = None
    was_open: bool = False

    @property
    def duration(self) -> float:
        """Seconds from start to end, never negative (clock skew gives 0); 0 without both."""
        start, end = self.start, self.end
        return 0.0 if start is None or end is None or end < start else end - start

    @property
    def skewed(self) -> bool:
        """True when the end came before the start by the clocks."""
        return self.start is not None and self.end is not None and self.end < self.start

    @property
    def error_type(self) -> str | None:
        """The error type of a failed, timed-out or retried attempt (None otherwise)."""
        if self.status == "timeout":
            return "timeout"
        if self.status not in ("failed", "retried") or self.end_event is None:
            return None
        details = self.end_event.details
        if self.status == "retried" and "error" not in details and "error_type" not in details:
            return "retried"
        return error_type_of(details)


class Observation(msgspec.Struct, gc=False):
    """What one event completes, as the pairing decided it.

    Attributes:
        event: the event observed.
        queue: its task's queue.
        duplicate: the event was delivered before (same ``event_id``): count it nowhere.
        counted: count ``event`` in per-event totals. False for an observation that only
            carries a decision made later (see ``released``), or while the queue label is
            not known yet (the count then comes later, in ``released``).
        queue_wait: seconds from when the task became due (ENQUEUED or RETRIED, or their
            ``details["eta"]``) to this STARTED.
        waiting: the change to the number of tasks waiting in ``queue`` (+1 enqueued, -1
            started, cancelled or expired while queued).
        opened: an attempt started and is now in progress.
        closed: the attempt this observation ends.
        attempt: the attempt number a STARTED opened.
        unpaired: reasons the event completed no pair (``clock_skew``, ``no_start``,
            ``superseded``, ``late``, ...).
        expired: attempts given up (never ended within ``ttl``, or superseded).
        released: observations decided now about earlier events (their pairs waited for
            the reorder window, or for an event that came later); handle each like this one.
    """

    event: TaskEvent
    queue: str
    duplicate: bool = False
    queue_wait: float | None = None
    opened: bool = False
    closed: Attempt | None = None
    attempt: int | None = None
    waiting: int = 0
    counted: bool = True
    unpaired: list[str] = []  # a fresh list each (msgspec copies empty defaults)
    expired: list[Attempt] = []
    released: list[Observation] = []

    def all(self) -> list[Observation]:
        """This observation followed by the ones it released."""
        return [self, *self.released]


def _ts(event: TaskEvent) -> float:
    return event.timestamp.timestamp()


def _attempt_number(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, _MAX_ATTEMPT)
    return default


def due_time(details: Mapping[str, Any], ts: float) -> float:
    """When a task enqueued at ``ts`` became due: ``details["eta"]`` (ISO-8601; no offset
    means UTC) when given and valid, else ``ts``."""
    eta = details.get("eta")
    if eta is None:
        return ts
    try:
        when = datetime.fromisoformat(eta) if isinstance(eta, str) else None
    except ValueError:
        return ts
    if when is None:
        return ts
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def compact_context(carrier: Mapping[str, str] | None) -> TraceContext | None:
    """A W3C ``traceparent`` carrier as (trace id, span id, flags); None if invalid."""
    if not carrier:
        return None
    parent = carrier.get("traceparent")
    if not isinstance(parent, str) or len(parent) != 55 or parent[2] != "-":
        return None
    try:
        trace_id, span_id = int(parent[3:35], 16), int(parent[36:52], 16)
        flags = int(parent[53:], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, flags
