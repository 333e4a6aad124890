"""One structured log line per task event: :class:`StructlogHandler`.

The line's ``event`` is ``task.<type in lower case>`` (``task.completed``); its keys:
``task_id``, ``event_id``, ``queue``, ``worker_id``, ``attempt``, ``duration_s`` (events
that end an attempt), ``error`` and ``error_type`` (failures), ``traceback`` (cut to
``max_traceback`` characters), ``trace_id`` and ``span_id`` (from the producer's stored
``traceparent``), ``event_timestamp`` (when it happened, ISO 8601; not ``timestamp``,
which the application's ``TimeStamper`` sets to the time of logging) and ``details`` (the
other details, sensitive keys redacted).

The handler logs through ``structlog.get_logger()`` (or the logger you pass) and never
calls ``structlog.configure()``: the application decides renderers and destinations.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import structlog

from omniq_observe._details import (
    DEFAULT_REDACT_KEYS,
    REDACTED,
    Redactor,
    error_type_of,
    truncate,
)
from omniq_observe._validate import positive_int
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.pairing import Observation, PairedHandler

__all__ = ["DEFAULT_LEVELS", "StructlogHandler", "capture_task_logs"]

#: Log levels by event type; any other type logs at ``info``.
DEFAULT_LEVELS: Mapping[str, str] = {
    "FAILED": "error",
    "TIMEOUT": "error",
    "RETRIED": "warning",
    "CANCELLED": "warning",
}
_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
_PROMOTED = frozenset(
    {"worker_id", "attempt", "error", "error_type", "traceback", "queue_name", "queue"}
)
# what a details key is to the line (StructlogHandler._classify)
_PROMOTED_KEY, _SENSITIVE_KEY, _PLAIN_KEY = "promoted", "sensitive", "plain"
_MAX_KEY_CLASSES = 10_000  # details keys whose class is remembered


class StructlogHandler(PairedHandler):
    """Logs one structured line per task event.

    Args:
        logger: a structlog logger (default ``structlog.get_logger("omniq_observe.tasks")``).
        levels: log level by event type, merged over :data:`DEFAULT_LEVELS`.
        redact: details keys (substrings, case-insensitive) whose values are hidden.
        max_traceback: the most characters of ``details["traceback"]`` logged.
        max_value_length: the most characters of any other string detail logged.
        ttl: seconds (event time) after which a start that never ended is forgotten.
        reorder_window: seconds of event time an event may arrive late and pair exactly.

    Raises:
        ConfigurationError: a level name or a limit is invalid.
    """

    name = "structlog"

    def __init__(
        self,
        logger: Any = None,
        levels: Mapping[str, str] | None = None,
        redact: Iterable[str] = DEFAULT_REDACT_KEYS,
        *,
        max_traceback: int = 4096,
        max_value_length: int = 1024,
        ttl: float = 3600.0,
        reorder_window: float = 10.0,
    ) -> None:
        merged = {**DEFAULT_LEVELS}
        for event_type, level in (levels or {}).items():
            if not isinstance(level, str) or level.lower() not in _LEVELS:
                msg = f"levels[{event_type!r}] must be one of {sorted(_LEVELS)}, got {level!r}"
                raise ConfigurationError(msg, setting="levels", value=level)
            merged[str(event_type).upper()] = level.lower()
        positive_int("max_traceback", max_traceback)
        positive_int("max_value_length", max_value_length)
        self.logger = logger if logger is not None else structlog.get_logger(
            "omniq_observe.tasks"
        )
        self.levels = merged
        self.max_traceback = max_traceback
        self.max_value_length = max_value_length
        self._redactor = Redactor(redact)
        self._names: dict[str, tuple[str, str]] = {}  # event type -> (event name, level)
        self._key_classes: dict[str, str] = {}  # details key -> _PROMOTED_KEY, ...
        super().__init__(ttl=ttl, reorder_window=reorder_window)

    def fields(self, obs: Observation) -> tuple[str, str, dict[str, Any]]:
        """Return (level, event name, key/values) of the line for one observation."""
        event = obs.event
        name, level = self._name_and_level(event.event_type)
        details = event.details
        fields: dict[str, Any] = {
            "task_id": event.task_id,
            "event_id": event.event_id,
            "queue": obs.queue,
        }
        _add_attempt(fields, obs)
        self._add_error(fields, event.event_type, details)
        _add_trace_ids(fields, event.trace_context)
        fields["event_timestamp"] = event.timestamp.isoformat()
        rest = self._other_details(details)
        if rest is not None:
            fields["details"] = rest
        return level, name, fields

    def _name_and_level(self, event_type: str) -> tuple[str, str]:
        """The line's ``event`` name and level for an event type (cached)."""
        named = self._names.get(event_type)
        if named is None:
            named = (f"task.{event_type.lower()}", self.levels.get(event_type, "info"))
            self._names[event_type] = named
        return named

    def _add_error(
        self, fields: dict[str, Any], event_type: str, details: Mapping[str, Any]
    ) -> None:
        """``error`` and ``error_type`` of a failure, and any ``traceback``, cut."""
        if event_type == "FAILED" or "error" in details:
            error = details.get("error")
            if error is not None:
                fields["error"] = truncate(str(error), self.max_value_length)
            fields["error_type"] = error_type_of(details)
        traceback = details.get("traceback")
        if traceback is not None:
            fields["traceback"] = truncate(str(traceback), self.max_traceback)

    def _other_details(self, details: Mapping[str, Any]) -> dict[str, Any] | None:
        """The details not promoted to fields, sensitive values redacted and strings cut;
        None when there are none."""
        rest: dict[str, Any] = {}
        nested = False
        classes, limit = self._key_classes, self.max_value_length
        for key, value in details.items():
            key_class = classes.get(key)
            if key_class is None:
                key_class = self._classify(key)
            if key_class == _PROMOTED_KEY:
                continue
            if key_class == _SENSITIVE_KEY:
                value = REDACTED
            elif isinstance(value, str):
                if len(value) > limit:
                    value = truncate(value, limit)
            elif isinstance(value, (dict, list)):
                nested = True
            rest[key] = value
        if not rest:
            return None
        return self._redactor.redact(rest) if nested else rest

    def _classify(self, key: str) -> str:
        """Whether a details key is promoted to a field, sensitive, or neither (cached)."""
        if key in _PROMOTED:
            key_class = _PROMOTED_KEY
        elif self._redactor.is_sensitive(key):
            key_class = _SENSITIVE_KEY
        else:
            key_class = _PLAIN_KEY
        if len(self._key_classes) < _MAX_KEY_CLASSES:
            self._key_classes[key] = key_class
        return key_class

    def handle(self, obs: Observation) -> None:
        """Log the line of one observation (one line per event: decisions made later,
        such as an attempt's end released by the reorder window, log nothing more)."""
        if obs.duplicate or not obs.counted:
            return
        level, name, fields = self.fields(obs)
        getattr(self.logger, level)(name, **fields)


def _add_attempt(fields: dict[str, Any], obs: Observation) -> None:
    """``duration_s`` of the attempt the event ended, ``worker_id`` and ``attempt`` (from
    the event's details, else from the attempt)."""
    details = obs.event.details
    worker = details.get("worker_id")
    attempt = details.get("attempt")
    closed = obs.closed
    if closed is not None:
        fields["duration_s"] = round(closed.duration, 6)
        worker = worker if worker is not None else closed.worker_id
        attempt = attempt if attempt is not None else closed.attempt
    elif attempt is None:
        attempt = obs.attempt
    if worker is not None:
        fields["worker_id"] = worker
    if attempt is not None:
        fields["attempt"] = attempt


def _add_trace_ids(fields: dict[str, Any], context: Mapping[str, str] | None) -> None:
    """``trace_id`` and ``span_id`` of the producer's ``traceparent``, when it has them."""
    traceparent = context.get("traceparent") if context else None
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) >= 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            fields["trace_id"] = parts[1]
            fields["span_id"] = parts[2]


@contextmanager
def capture_task_logs() -> Iterator[list[dict[str, Any]]]:
    """Capture the task log lines logged inside the block (for tests).

    Yields a list that, when the block ends, holds one dict per ``task.*`` line
    (``event``, ``log_level`` and the fields), as :func:`structlog.testing.capture_logs`
    (which it uses) gives them. structlog's configuration is restored afterwards.
    """
    task_lines: list[dict[str, Any]] = []
    with structlog.testing.capture_logs() as captured:
        try:
            yield task_lines
        finally:
            task_lines.extend(
                dict(entry) for entry in captured
                if str(entry.get("event", "")).startswith("task.")
            )
