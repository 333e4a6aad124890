"""Celery 5: ``instrument(app, logger)`` on the producer and in the worker.

Celery's signals cover both sides:

* ``before_task_publish`` (producer): ENQUEUED with ``queue_name`` (the routing key),
  ``task_name`` and ``eta`` (countdown/eta), in the caller's span, so the task's span joins
  the caller's trace. The republish of a retry is not an ENQUEUED: it gives RETRIED its eta.
* ``task_prerun``: STARTED (``attempt`` = retries + 1); ``task_success``: COMPLETED;
  ``task_failure``: FAILED, or TIMEOUT for ``SoftTimeLimitExceeded`` (raised in the task)
  and ``TimeLimitExceeded`` (the hard limit; the main worker process reports it);
  ``task_retry``: FAILED (the attempt's error) then RETRIED (``attempt`` of the next run,
  ``eta``); ``task_revoked``: CANCELLED (``reason`` revoked / terminated / expired).
* Prefork pool: each child process logs through its own writer (the logger is fork-safe;
  ``worker_process_init`` starts it) and flushes at ``worker_process_shutdown``; the main
  process flushes at ``worker_shutdown``.

Every hook catches its own errors: a failure to log is logged and counted
(``instrumentation.recorder.errors``) and the task goes on.
"""

from __future__ import annotations

from typing import Any

from omniq_observe.exceptions import MissingExtraError

try:
    from celery import Celery, signals
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    msg = "omniq_observe.integrations.celery needs Celery: pip install 'omniq-observe[celery]'"
    raise MissingExtraError(msg) from exc

from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.events.logger import EventLogger
from omniq_observe.integrations._common import TaskRecorder, iso_time, sync_logger_for

__all__ = ["CeleryInstrumentation", "instrument"]

_TIMEOUTS = (SoftTimeLimitExceeded, TimeLimitExceeded)


def instrument(
    app: Celery, logger: EventLogger | BaseEventStorage | str
) -> CeleryInstrumentation:
    """Observe ``app``'s tasks, producer and worker side; return the instrumentation.

    Args:
        app: the Celery application (call this where the app is defined, so that both the
            producer and ``celery -A ... worker`` run it).
        logger: an ``EventLogger`` (``batch=True`` recommended), or a storage backend or
            storage URL to get a batching one.
    """
    instrumentation = CeleryInstrumentation(app, sync_logger_for(logger))
    instrumentation.connect()
    return instrumentation


class CeleryInstrumentation:
    """The signal receivers of one instrumented app; ``disconnect()`` removes them."""

    def __init__(self, app: Celery, logger: EventLogger) -> None:
        self.app = app
        self.logger = logger
        self.recorder = TaskRecorder(logger)
        self._retry_eta: dict[str, str | None] = {}
        self._receivers: list[tuple[Any, Any]] = [
            (signals.before_task_publish, self._published),
            (signals.task_prerun, self._started),
            (signals.task_success, self._succeeded),
            (signals.task_failure, self._failed),
            (signals.task_retry, self._retried),
            (signals.task_revoked, self._revoked),
            (signals.worker_process_shutdown, self._flush),
            (signals.worker_shutdown, self._flush),
        ]

    def connect(self) -> None:
        """Connect the receivers."""
        for signal, receiver in self._receivers:
            signal.connect(receiver, weak=False)

    def disconnect(self) -> None:
        """Disconnect every receiver."""
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)

    def _ours(self, task: Any) -> bool:
        return getattr(task, "app", None) is self.app

    # -- producer ------------------------------------------------------------------------
    def _published(
        self, sender: Any = None, headers: Any = None, routing_key: Any = None,
        body: Any = None, **_: Any,
    ) -> None:
        try:
            info = headers if isinstance(headers, dict) and "id" in headers else body
            task_id, retries = str(info["id"]), int(info.get("retries") or 0)
            eta = iso_time(info.get("eta"))
        except Exception:
            self.recorder.errors += 1
            return
        if retries:  # a retry's republish, in the worker: RETRIED carries its eta
            self._retry_eta[task_id] = eta
            return
        self.recorder.log(
            task_id, "ENQUEUED", queue_name=routing_key or "celery",
            task_name=info.get("task") or sender, eta=eta,
        )

    # -- worker --------------------------------------------------------------------------
    def _started(self, sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
        if not self._ours(task):
            return
        request = task.request
        self.recorder.log(
            task_id, "STARTED", task_name=task.name,
            attempt=int(request.retries or 0) + 1,
        )

    def _succeeded(self, sender: Any = None, **_: Any) -> None:
        if not self._ours(sender):
            return
        request = sender.request
        self.recorder.log(
            request.id, "COMPLETED", task_name=sender.name,
            attempt=int(request.retries or 0) + 1,
        )

    def _failed(
        self, sender: Any = None, task_id: Any = None, exception: Any = None,
        einfo: Any = None, **_: Any,
    ) -> None:
        if not self._ours(sender):
            return
        name = getattr(sender, "name", None)
        if isinstance(exception, _TIMEOUTS):
            self.recorder.log(task_id, "TIMEOUT", task_name=name,
                              timeout_seconds=_limit(sender, exception),
                              error_type=type(exception).__name__)
            return
        traceback = getattr(einfo, "traceback", None)
        self.recorder.log(task_id, "FAILED", task_name=name,
                          **self.recorder.failure(exception, traceback))

    def _retried(
        self, sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None,
        **_: Any,
    ) -> None:
        if not self._ours(sender):
            return
        task_id, retries = request.id, int(getattr(request, "retries", 0) or 0)
        error = getattr(reason, "exc", None)
        failure = self.recorder.failure(error, getattr(einfo, "traceback", None))
        self.recorder.log(task_id, "FAILED", task_name=sender.name, attempt=retries + 1,
                          **failure)
        self.recorder.log(
            task_id, "RETRIED", task_name=sender.name, attempt=retries + 2,
            max_attempts=_max_attempts(sender), eta=self._retry_eta.pop(task_id, None),
            error_type=failure.get("error_type"),
        )

    def _revoked(
        self, sender: Any = None, request: Any = None, terminated: bool = False,
        expired: bool = False, **_: Any,
    ) -> None:
        if sender is not None and not self._ours(sender):
            return
        reason = "expired" if expired else "terminated" if terminated else "revoked"
        self.recorder.log(request.id, "CANCELLED", task_name=getattr(sender, "name", None),
                          reason=reason)

    def _flush(self, **_: Any) -> None:
        self.recorder.flush()



def _limit(task: Any, exc: BaseException) -> float | None:
    """The time limit that ``exc`` reports: the hard one's value, else the soft limit."""
    given = exc.args[0] if exc.args else None
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        return float(given)
    limits = getattr(getattr(task, "request", None), "timelimit", None) or (None, None)
    value = limits[1] or getattr(task, "soft_time_limit", None)
    return float(value) if value else None


def _max_attempts(task: Any) -> int | None:
    retries = getattr(task, "max_retries", None)
    return None if retries is None else int(retries) + 1
