"""One task's story from its stored events: attempts, queue waits, redacted details."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any

from omniq_observe._details import Redactor, error_type_of, truncate
from omniq_observe.models.event import TaskEvent
from omniq_observe.pairing import Attempt, Observation, TaskPairing

__all__ = ["MAX_TEXT", "task_timeline", "trace_id_of", "traceback_head"]

#: Strings in details are cut to this many characters, as in span events.
MAX_TEXT = 1024
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_REDACTOR = Redactor()


def iso(ts: float) -> str:
    """Epoch seconds as ISO-8601 UTC with microseconds."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def trace_id_of(event: TaskEvent) -> str | None:
    """The trace id of the event's stored W3C ``traceparent``, if it has a valid one."""
    match = _TRACEPARENT.match(event.trace_context.get("traceparent", ""))
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


def traceback_head(details: dict[str, Any], lines: int = 6) -> str | None:
    """The first ``lines`` lines of ``details["traceback"]`` (a string), if any."""
    text = details.get("traceback")
    if not isinstance(text, str) or not text:
        return None
    return truncate("\n".join(text.splitlines()[:lines]), MAX_TEXT)


def _clip(value: Any) -> Any:
    """Cut long strings, nested too, as span events cut attribute values."""
    if isinstance(value, str):
        return truncate(value, MAX_TEXT)
    if isinstance(value, dict):
        return {k: _clip(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip(v) for v in value]
    return value


def _attempt(attempt: Attempt, now: float) -> dict[str, Any]:
    end = attempt.end
    return {
        "attempt": attempt.attempt,
        "worker_id": attempt.worker_id,
        "start": None if attempt.start is None else iso(attempt.start),
        "end": None if end is None else iso(end),
        "status": attempt.status,
        "duration_seconds": attempt.duration if end is not None
        else max(0.0, now - (attempt.start or now)),
    }


def task_timeline(task_id: str, events: list[TaskEvent], now: float) -> dict[str, Any]:
    """The document of ``/api/tasks/<id>``: events, attempts and waits of one task.

    Args:
        task_id: the task.
        events: its stored events in log order.
        now: epoch seconds, the end of an attempt still running.
    """
    pairing = TaskPairing(None)
    attempts: list[dict[str, Any]] = []
    waits: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    running: dict[int, TaskEvent] = {}  # attempt number -> its STARTED
    queue = None
    seen: list[Observation] = []
    for event in events:
        seen += pairing.observe_now(event).all()
        rows.append(_event_row(event))
    seen += pairing.release(math.inf)  # every event is here: decide what waited
    for obs in seen:
        event = obs.event
        queue = obs.queue
        ts = event.timestamp.timestamp()
        if obs.queue_wait is not None:
            waits.append({"start": iso(ts - obs.queue_wait), "end": iso(ts),
                          "seconds": obs.queue_wait})
        if obs.opened and obs.attempt is not None:
            running[obs.attempt] = event
        if obs.closed is not None:
            running.pop(obs.closed.attempt, None)
            attempts.append(_attempt(obs.closed, now))
    for number, started in running.items():
        worker = started.details.get("worker_id")
        attempts.append(_attempt(Attempt(
            task_id, queue or "", number, worker if isinstance(worker, str) else None,
            started.timestamp.timestamp(), None, "running"), now))
    attempts.sort(key=lambda a: (a["start"], a["attempt"]))
    trace_ids = list(dict.fromkeys(t for t in map(trace_id_of, events) if t is not None))
    return {
        "task_id": task_id,
        "queue": queue,
        "events": rows,
        "attempts": attempts,
        "queue_waits": waits,
        "trace_ids": trace_ids,
    }


def _event_row(event: TaskEvent) -> dict[str, Any]:
    details = event.details
    row: dict[str, Any] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "timestamp": iso(event.timestamp.timestamp()),
        "details": _clip(_REDACTOR.redact(details)),
        "trace_id": trace_id_of(event),
    }
    if event.event_type in ("FAILED", "TIMEOUT"):
        row["error_type"] = error_type_of(details)
    return row
