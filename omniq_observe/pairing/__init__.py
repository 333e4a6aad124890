"""Task pairing: which events belong together, for durations, queue waits and task spans.

:class:`TaskPairing` follows each task through its events and says, for every event, what
it completes (an :class:`Observation`): a queue wait, an :class:`Attempt` that ended, an
attempt that opened, a duplicate delivery to ignore, a start that will never finish.
Every built-in handler that needs pairs (Prometheus, OpenTelemetry metrics, tracing, the
structlog handler, ``stats`` and ``top``) reads one; handlers of one processor share one.
Write your own by subclassing :class:`PairedHandler`.

Rules (event time, whatever the arrival order):

* An attempt is a STARTED and the first COMPLETED, FAILED, TIMEOUT, CANCELLED or RETRIED
  that follows it in event time for the same task. One ended by RETRIED (no terminal
  event in between) has status ``retried``.
* A queue wait runs from an ENQUEUED, or from the RETRIED that re-enqueued the task, to
  the next STARTED in event time; from ``details["eta"]`` (ISO-8601) when the ENQUEUED or
  RETRIED carries one (a delayed task or a retry backoff is not waiting before its time).
  The tasks waiting (enqueued and not started) are counted per queue
  (``Observation.waiting``).
* A CANCELLED with no open attempt ends a queued task quietly.
* The queue of a task comes from its ENQUEUED (``queue_name`` or ``queue``; "default" when
  it names none); without it: the event's own details, then the task's stored history,
  then, once the reorder window has passed, "unknown".
* ``reorder_window`` (seconds of event time, default 10): an event arriving at most that
  late, relative to the newest event seen (the *watermark* is that event's time minus the
  window), pairs exactly. Pairs that a late event could still change wait for the
  watermark: an attempt ended by RETRIED (its FAILED may come), a STARTED while another
  attempt is open, a cancellation of a queued task, a terminal with no start, a STARTED
  whose ``details["attempt"]`` says an attempt is missing. Everything else is decided at
  once, and per-event counts never wait (unless the queue label is not known yet).
* An event later than that which would change a pair already decided is counted
  ``late`` (``Observation.unpaired``) and changes nothing: numbers are never wrong.
  A terminal event stamped before its own STARTED (clock skew) gives a zero duration,
  flagged ``clock_skew``.
* Out-of-order tasks read the task's history from storage (once): stored events are the
  source of truth, and those stored before the first one this pairing saw were handled
  before (by this pairing's fast path, or by the processor's run before a restart), so
  their pairs are not counted twice. When every event of a task is in storage, any
  arrival order gives the exact result.
* An ``event_id`` seen before (among the last ``dedupe_window``) is a duplicate delivery.
* A start that never finishes expires ``ttl`` seconds (event time) after the task's last
  event; a queued task likewise leaves the waiting count.

Speed and memory: tasks whose events come in order and pair unambiguously stay on a fast
path (one lookup, ~75 bytes of typed arrays per open task plus its id; 25 more
with trace contexts kept); only the others keep their events in a per-task log.
"""

from __future__ import annotations

from omniq_observe.pairing._pairing import TaskPairing
from omniq_observe.pairing._shared import PairedHandler
from omniq_observe.pairing._types import (
    OVERFLOW,
    UNKNOWN_QUEUE,
    Attempt,
    History,
    Observation,
    TraceContext,
)

__all__ = [
    "OVERFLOW",
    "UNKNOWN_QUEUE",
    "Attempt",
    "History",
    "Observation",
    "PairedHandler",
    "TaskPairing",
    "TraceContext",
]
