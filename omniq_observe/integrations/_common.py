"""What every framework integration shares: a recorder that never raises into the worker.

:class:`TaskRecorder` turns "task X reached state Y" into a :class:`TaskEvent` with the
details every integration fills the same way (``worker_id``, ``task_name``, ``queue_name``,
``attempt``, ``eta``, ``error``/``error_type``/``traceback``), and logs it through the
user's logger. A failure to log is itself logged and counted (``recorder.errors``); the
task goes on.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import traceback as tb_module
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from omniq_observe._details import DEFAULT_REDACT_KEYS, REDACTED
from omniq_observe.backend._url import from_url
from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.events.logger import AsyncEventLogger, EventLogger
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import TaskEvent

__all__ = ["TaskRecorder", "async_logger_for", "iso_time", "sync_logger_for"]

_log = logging.getLogger("omniq_observe.integrations")
MAX_TRACEBACK = 4096


def sync_logger_for(target: EventLogger | BaseEventStorage | str) -> EventLogger:
    """The user's ``EventLogger``, or a batching one over a storage or storage URL.

    Raises:
        ConfigurationError: ``target`` is none of these.
    """
    if isinstance(target, EventLogger):
        return target
    return EventLogger(_storage_for(target), batch=True)


def async_logger_for(target: AsyncEventLogger | BaseEventStorage | str) -> AsyncEventLogger:
    """The same for ``AsyncEventLogger`` (arq, taskiq)."""
    return target if isinstance(target, AsyncEventLogger) else AsyncEventLogger(
        _storage_for(target), batch=True
    )


def _storage_for(target: object) -> BaseEventStorage:
    if isinstance(target, BaseEventStorage):
        return target
    if isinstance(target, str):
        return from_url(target)
    msg = (
        "logger must be an event logger, a storage backend or a storage URL, "
        f"got {type(target).__name__}"
    )
    raise ConfigurationError(msg, setting="logger", value=target)


def iso_time(value: Any) -> str | None:
    """``value`` (a datetime, an ISO-8601 string, or epoch seconds) as ISO-8601 UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = datetime.fromtimestamp(value, timezone.utc)
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return str(value.astimezone(timezone.utc).isoformat())


class TaskRecorder:
    """Logs task lifecycle events for an integration; never raises.

    Args:
        logger: an ``EventLogger`` or ``AsyncEventLogger`` (use ``log`` or ``alog``).
        redact_keys: substrings of names whose values tracebacks and errors hide
            (``password=...``, ``"token": ...``).
        max_traceback: the most characters of a traceback kept (its end).
    """

    def __init__(
        self,
        logger: EventLogger | AsyncEventLogger,
        *,
        redact_keys: Iterable[str] = DEFAULT_REDACT_KEYS,
        max_traceback: int = MAX_TRACEBACK,
    ) -> None:
        self.logger = logger
        self.errors = 0
        self.max_traceback = max_traceback
        keys = "|".join(re.escape(k) for k in redact_keys) or r"(?!)"
        self._secret = re.compile(
            rf"((?:\w*(?:{keys})\w*)['\"]?\s*[=:]\s*)(['\"]?)[^\s,'\"}})]+\2",
            re.IGNORECASE,
        )
        self._pid = 0
        self._worker_id = ""

    @property
    def worker_id(self) -> str:
        """``host:pid`` of the process logging (a forked child gets its own)."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid, self._worker_id = pid, f"{socket.gethostname()}:{pid}"
        return self._worker_id

    def event(
        self, task_id: str, event_type: str, details: Mapping[str, Any],
        at: datetime | None = None,
    ) -> TaskEvent:
        """A TaskEvent (at ``at``, else now) with ``worker_id`` added and ``None`` values
        left out."""
        clean = {key: value for key, value in details.items() if value is not None}
        clean.setdefault("worker_id", self.worker_id)
        if at is None:
            return TaskEvent(task_id=str(task_id), event_type=event_type, details=clean)
        return TaskEvent(task_id=str(task_id), event_type=event_type, details=clean,
                         timestamp=at)

    def log(self, task_id: str, event_type: str, **details: Any) -> None:
        """Log one event through a sync logger; a failure is logged and counted."""
        try:
            event = self.event(task_id, event_type, details)
            self.logger.log_event(event)
        except Exception:
            self._failed(task_id, event_type)

    async def alog(
        self, task_id: str, event_type: str, at: datetime | None = None, **details: Any
    ) -> None:
        """Log one event through an async logger; a failure is logged and counted."""
        try:
            event = self.event(task_id, event_type, details, at)
            await self.logger.log_event(event)  # type: ignore[misc]
        except Exception:
            self._failed(task_id, event_type)

    def _failed(self, task_id: str, event_type: str) -> None:
        self.errors += 1
        _log.warning(
            "omniq-observe could not log %s for task %s", event_type, task_id, exc_info=True
        )

    def failure(
        self, exc: BaseException | None, traceback: TracebackType | str | None = None
    ) -> dict[str, Any]:
        """``error``, ``error_type`` and a redacted, cut ``traceback`` for ``exc``."""
        if exc is None:
            return {}
        if isinstance(traceback, str):
            text = traceback
        else:
            tb = traceback if traceback is not None else exc.__traceback__
            text = "".join(tb_module.format_exception(type(exc), exc, tb))
        details = {
            "error": self.redact(f"{type(exc).__name__}: {exc}")[:1024],
            "error_type": type(exc).__name__,
        }
        if text:
            details["traceback"] = self.cut(self.redact(text))
        return details

    def redact(self, text: str) -> str:
        """Hide the values of sensitive names in ``text``."""
        return self._secret.sub(lambda m: m.group(1) + REDACTED, text)

    def cut(self, text: str) -> str:
        """Keep the last ``max_traceback`` characters (where the error is)."""
        if len(text) <= self.max_traceback:
            return text
        return "…" + text[-(self.max_traceback - 1):]

    def flush(self, timeout: float = 5.0) -> None:
        """Flush a sync logger; never raises."""
        try:
            self.logger.flush(timeout)
        except Exception:
            self._failed("-", "flush")
