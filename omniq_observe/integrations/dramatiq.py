"""Dramatiq: one middleware for the producer and the worker.

``broker.add_middleware(OmniqMiddleware(logger))`` (or ``instrument(broker, logger)``):

* ``before_enqueue`` (producer): ENQUEUED with ``queue_name``, ``task_name`` (the actor)
  and ``eta`` for a delayed message, in the caller's span;
* ``before_process_message``: STARTED; ``after_process_message``: COMPLETED, FAILED, or
  TIMEOUT for the ``TimeLimit`` middleware's ``TimeLimitExceeded``;
* a retry by the ``Retries`` middleware: FAILED (the attempt's error) then RETRIED with
  ``attempt`` and the backoff's ``eta``, whatever the order of the two middlewares;
* ``after_skip_message`` (for example the ``AgeLimit`` middleware): CANCELLED with
  ``reason="skipped"``.

Dramatiq has no way to cancel a message, so there is no other CANCELLED. Worker processes
are forked: each logs through its own writer (the logger is fork-safe) and flushes at
``before_worker_shutdown``.
"""

from __future__ import annotations

import threading
from typing import Any

from omniq_observe.exceptions import MissingExtraError

try:
    import dramatiq
    from dramatiq.common import q_name
    from dramatiq.middleware import Middleware, Retries
    from dramatiq.middleware.time_limit import TimeLimitExceeded
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    msg = (
        "omniq_observe.integrations.dramatiq needs Dramatiq: "
        "pip install 'omniq-observe[dramatiq]'"
    )
    raise MissingExtraError(msg) from exc

from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.events.logger import EventLogger
from omniq_observe.integrations._common import TaskRecorder, iso_time, sync_logger_for

__all__ = ["OmniqMiddleware", "instrument"]

_MARK = "omniq_enqueued"  # a message option: ENQUEUED was logged for this message


class OmniqMiddleware(Middleware):
    """Logs each message's lifecycle as task events; never raises into the worker.

    Args:
        logger: an ``EventLogger`` (``batch=True`` recommended), or a storage backend or
            storage URL to get a batching one.
    """

    def __init__(self, logger: EventLogger | BaseEventStorage | str) -> None:
        self.logger = sync_logger_for(logger)
        self.recorder = TaskRecorder(self.logger)
        self._local = threading.local()  # the message this worker thread is processing

    # -- producer (and the Retries middleware's re-enqueue) -------------------------------
    def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        options = message.options
        eta = iso_time(options["eta"] / 1000) if options.get("eta") else None
        retries = int(options.get("retries") or 0)
        if retries and getattr(self._local, "message_id", None) == message.message_id:
            self._log_failure(message, getattr(message, "_exception", None))
            self.recorder.log(
                message.message_id, "RETRIED", task_name=message.actor_name,
                attempt=self._attempt() + 1, eta=eta, max_attempts=_max_attempts(broker, message),
            )
            return
        if options.get(_MARK):  # moved out of the delay queue, or enqueued again
            return
        options[_MARK] = True  # travels with the message
        self.recorder.log(
            message.message_id, "ENQUEUED", queue_name=q_name(message.queue_name),  # type: ignore[no-untyped-call]
            task_name=message.actor_name, eta=eta,
        )

    # -- worker ---------------------------------------------------------------------------
    def before_process_message(self, broker: Any, message: Any) -> None:
        local = self._local
        local.message_id, local.failure_logged = message.message_id, False
        local.attempt = int(message.options.get("retries") or 0) + 1
        self.recorder.log(message.message_id, "STARTED", task_name=message.actor_name,
                          attempt=local.attempt)

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if exception is None:
            self.recorder.log(message.message_id, "COMPLETED", task_name=message.actor_name,
                              attempt=self._attempt())
        elif not getattr(self._local, "failure_logged", False):
            self._log_failure(message, exception)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self.recorder.log(message.message_id, "CANCELLED", task_name=message.actor_name,
                          reason="skipped")

    def _attempt(self) -> int:
        """The number of the attempt this thread is running (counted before Retries counts)."""
        return int(getattr(self._local, "attempt", 1))

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self.recorder.flush()

    def _log_failure(self, message: Any, exception: BaseException | None) -> None:
        """FAILED (or TIMEOUT) for the attempt that just ended; once per attempt."""
        if getattr(self._local, "failure_logged", False):
            return
        self._local.failure_logged = True
        name, attempt = message.actor_name, self._attempt()
        if isinstance(exception, TimeLimitExceeded):
            self.recorder.log(message.message_id, "TIMEOUT", task_name=name, attempt=attempt,
                              error_type=type(exception).__name__)
            return
        self.recorder.log(message.message_id, "FAILED", task_name=name, attempt=attempt,
                          **self.recorder.failure(exception))


def instrument(
    broker: dramatiq.Broker, logger: EventLogger | BaseEventStorage | str
) -> OmniqMiddleware:
    """Add an :class:`OmniqMiddleware` to ``broker``; return it."""
    middleware = OmniqMiddleware(logger)
    broker.add_middleware(middleware)  # type: ignore[no-untyped-call]
    return middleware


def _max_attempts(broker: Any, message: Any) -> int | None:
    limit = message.options.get("max_retries")
    if limit is None:
        try:
            limit = broker.get_actor(message.actor_name).options.get("max_retries")
        except Exception:
            limit = None
    if limit is None:
        for middleware in broker.middleware:
            if isinstance(middleware, Retries):
                limit = middleware.max_retries
    return None if limit is None else int(limit) + 1
