"""The types and constants of :mod:`omniq_observe._pairing`: what one event completes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from omniq_observe.models.event import TaskEvent

__all__ = ["OVERFLOW", "UNKNOWN_QUEUE", "Attempt", "History", "Observation"]

_TERMINAL_STATUS = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "TIMEOUT": "timeout",
    "CANCELLED": "cancelled",
}
_FINAL = frozenset({"COMPLETED", "CANCELLED"})  # a task that ends so is not retried
_MAX_INTERNED = 0xFFFF  # names are stored as unsigned 16-bit numbers
_MAX_ATTEMPT = 0xFFFF
_EXPIRY_EVERY = 1024
UNKNOWN_QUEUE = "unknown"
OVERFLOW = "__overflow__"

History = Callable[[str], Awaitable[list[TaskEvent]]]
# A task enqueued since the pairing last settled, as TaskPairing keeps it until then: the
# time it was added, then a task table slot's fields (queue, t_enq, t_start, t_touch,
# attempt, worker) and the ENQUEUED's trace context when kept.
_Young = tuple[float, int, float, float, float, int, int, dict[str, str] | None]


# Made for every event, so built in C (msgspec structs: a quarter of a dataclass's cost).
# gc=False: an attempt refers to strings, floats, an event (itself untracked) and a dict of
# strings, and an observation to those and to lists of strings and attempts; none can refer
# back, so neither is ever part of a reference cycle.
class Attempt(msgspec.Struct, gc=False):
    """One STARTED paired with the event that ended it (or with nothing, when it expired)."""

    task_id: str
    queue: str
    attempt: int
    worker_id: str | None
    start: float  # epoch seconds, exact to the microsecond
    end: float | None
    status: str  # completed, failed, timeout, cancelled, retried; "expired" when it never ended
    end_event: TaskEvent | None = None
    context: dict[str, str] | None = None  # the ENQUEUED event's trace context, if kept
    was_open: bool = False  # an earlier Observation reported it opened (in progress)

    @property
    def duration(self) -> float:
        """Seconds from start to end, never negative (clock skew gives 0)."""
        return 0.0 if self.end is None else max(0.0, self.end - self.start)

    @property
    def skewed(self) -> bool:
        """True when the end came before the start by the clocks."""
        return self.end is not None and self.end < self.start


class Observation(msgspec.Struct, gc=False):
    """What one event completes."""

    event: TaskEvent
    queue: str
    duplicate: bool = False
    queue_wait: float | None = None
    opened: bool = False  # an attempt started and is now in progress
    closed: Attempt | None = None
    attempt: int | None = None  # the attempt number a STARTED opened
    unpaired: list[str] = []  # a fresh list each (msgspec copies empty defaults)
    expired: list[Attempt] = []


def _ts(event: TaskEvent) -> float:
    return event.timestamp.timestamp()


def _attempt_number(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, _MAX_ATTEMPT)
    return default

