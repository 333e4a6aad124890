"""taskiq: one ``TaskiqMiddleware`` for the producer (``kiq``) and the worker.

``broker.add_middlewares(OmniqMiddleware(logger))``:

* ``pre_send`` (producer): ENQUEUED with ``queue_name`` (the broker's ``queue_name``),
  ``task_name`` and ``eta`` (a ``delay`` label), in the caller's span;
* ``pre_execute``: STARTED; ``post_execute``: COMPLETED; ``on_error``: FAILED, or TIMEOUT
  when the ``timeout`` label's limit ran out;
* a retry by ``SimpleRetryMiddleware`` / ``SmartRetryMiddleware`` (the ``_retries``
  label): FAILED (the attempt's error) then RETRIED with ``attempt``, whatever the order
  of the middlewares.

taskiq has no cancellation, so there is no CANCELLED. ``shutdown`` flushes the logger.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from omniq_observe.exceptions import MissingExtraError

try:
    from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
    from taskiq.exceptions import NoResultError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    msg = "omniq_observe.integrations.taskiq needs taskiq: pip install 'omniq-observe[taskiq]'"
    raise MissingExtraError(msg) from exc

from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.events.logger import AsyncEventLogger
from omniq_observe.integrations._common import TaskRecorder, async_logger_for

__all__ = ["OmniqMiddleware"]

_TICK = timedelta(microseconds=1)  # RETRIED right after the FAILED it follows


class OmniqMiddleware(TaskiqMiddleware):
    """Logs each task's lifecycle as task events; never raises into the worker.

    Args:
        logger: an ``AsyncEventLogger`` (``batch=True`` recommended), or a storage backend
            or storage URL to get a batching one.
    """

    def __init__(self, logger: AsyncEventLogger | BaseEventStorage | str) -> None:
        super().__init__()
        self.logger = async_logger_for(logger)
        self.recorder = TaskRecorder(self.logger)
        self._running: dict[str, dict[str, Any]] = {}  # task id -> attempt, failure logged

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        retries = _retries(message)
        if retries:
            await self._retried(message, retries)
            return message
        queue = getattr(self.broker, "queue_name", None)
        await self.recorder.alog(
            message.task_id, "ENQUEUED", queue_name=queue if isinstance(queue, str) else None,
            task_name=message.task_name, eta=_eta(message),
        )
        return message

    async def _retried(self, message: TaskiqMessage, retries: int) -> None:
        """RETRIED after the attempt's FAILED, whichever middleware's on_error runs first."""
        details: dict[str, Any] = {
            "task_name": message.task_name, "attempt": retries + 1, "eta": _eta(message),
            "max_attempts": _int(message.labels.get("max_retries")),
        }
        running = self._running.get(message.task_id)
        if running is not None and not running["failed"]:
            # the retry middleware ran before our on_error: keep the times, log both there
            now = datetime.now(timezone.utc)
            running["failed_at"], running["retry"] = now, (now + _TICK, details)
            return
        await self.recorder.alog(message.task_id, "RETRIED", **details)

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        attempt = _retries(message) + 1
        self._running[message.task_id] = {"attempt": attempt, "failed": False}
        await self.recorder.alog(message.task_id, "STARTED", task_name=message.task_name,
                                 attempt=attempt)
        return message

    async def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        running = self._running.get(message.task_id)
        if running is None or isinstance(exception, NoResultError):
            return
        await self._failure(message, running, exception)

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        running = self._running.pop(message.task_id, None)
        if running is not None and running.get("retry") and not running["failed"]:
            await self._failure(message, running, None)  # no on_error of ours ran
        if running is not None and not result.is_err:
            await self.recorder.alog(message.task_id, "COMPLETED", task_name=message.task_name,
                                     attempt=running["attempt"])

    async def shutdown(self) -> None:
        try:
            await self.logger.flush(5.0)
        except Exception:
            self.recorder.errors += 1

    async def _failure(
        self, message: TaskiqMessage, running: dict[str, Any], exception: BaseException | None
    ) -> None:
        """FAILED (or TIMEOUT) for the attempt that just ended; once per attempt."""
        if running["failed"]:
            return
        running["failed"] = True
        task_id, at = message.task_id, running.get("failed_at")
        details: dict[str, Any] = {"task_name": message.task_name,
                                   "attempt": running["attempt"]}
        if isinstance(exception, TimeoutError):
            await self.recorder.alog(task_id, "TIMEOUT", at, error_type="TimeoutError",
                                     timeout_seconds=_float(message.labels.get("timeout")),
                                     **details)
        else:
            await self.recorder.alog(task_id, "FAILED", at, **details,
                                     **self.recorder.failure(exception))
        if running.get("retry"):
            retried_at, retried = running["retry"]
            await self.recorder.alog(task_id, "RETRIED", retried_at, **retried)


def _retries(message: TaskiqMessage) -> int:
    return _int(message.labels.get("_retries")) or 0


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _eta(message: TaskiqMessage) -> str | None:
    delay = _float(message.labels.get("delay"))
    if not delay:
        return None
    return (datetime.now(timezone.utc) + timedelta(seconds=delay)).isoformat()
