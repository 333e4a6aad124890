"""RQ 2: a ``Queue`` subclass (or ``instrument(queue, logger)``) and a ``Worker`` class.

Producer: ``ObservedQueue`` logs ENQUEUED (``queue_name``, ``task_name``, ``eta`` for
``enqueue_at``/``enqueue_in``) just before the job is pushed, in the caller's span.

Worker (``rq worker --worker-class ...``, see :func:`worker_class`), in the work horse:
STARTED, COMPLETED, FAILED (``error_type``, redacted cut traceback), TIMEOUT (RQ's
``job_timeout``), FAILED then RETRIED (``Retry(max=..., interval=...)``, with ``eta``);
in the worker itself: CANCELLED when a running job is stopped (``send_stop_job_command``),
FAILED when the work horse dies. Each work horse is a forked child: it logs through its
own writer (the logger is fork-safe) and flushes before it exits.

RQ cannot report: ``job.cancel()`` of a job still queued (no worker sees it).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

from omniq_observe.exceptions import MissingExtraError

try:
    from rq import Queue, Worker
    from rq.job import Job
    from rq.timeouts import JobTimeoutException
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    msg = "omniq_observe.integrations.rq needs RQ: pip install 'omniq-observe[rq]'"
    raise MissingExtraError(msg) from exc

from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.events.logger import EventLogger
from omniq_observe.integrations._common import TaskRecorder, iso_time, sync_logger_for

__all__ = ["ObservedQueue", "ObservedWorker", "instrument", "queue_class", "worker_class"]

Target = EventLogger | BaseEventStorage | str
_ATTEMPT = "omniq_attempt"  # job.meta key: the number of the attempt about to run
_retrying: set[str] = set()  # job ids this process is re-queueing (not a new ENQUEUED)


def _recorder_from_env() -> TaskRecorder:
    url = os.environ.get("OMNIQ_OBSERVE_STORAGE", "sqlite:///omniq-events.db")
    return TaskRecorder(sync_logger_for(url))


class _Enqueued:
    """Logs ENQUEUED for the jobs a queue pushes (not for its own retries)."""

    def __init__(self, recorder: TaskRecorder) -> None:
        self.recorder = recorder

    def __call__(self, queue: Any, job: Job, eta: datetime | None = None) -> None:
        if job.id in _retrying:
            return
        self.recorder.log(
            job.id, "ENQUEUED", queue_name=queue.name, task_name=_name(job),
            eta=iso_time(eta),
        )


class ObservedQueue(Queue):
    """A ``Queue`` that logs ENQUEUED; its logger comes from :func:`queue_class` (or from
    ``OMNIQ_OBSERVE_STORAGE`` when used as is)."""

    _omniq: _Enqueued | None = None

    @classmethod
    def _enqueued(cls) -> _Enqueued:
        if cls._omniq is None:
            cls._omniq = _Enqueued(_recorder_from_env())
        return cls._omniq

    def enqueue_job(self, job: Job, pipeline: Any = None, at_front: bool = False,
                    unique: bool = False) -> Job:
        self._enqueued()(self, job)
        return super().enqueue_job(job, pipeline=pipeline, at_front=at_front, unique=unique)

    def schedule_job(self, job: Job, datetime: datetime, pipeline: Any = None,
                     unique: bool = False) -> Job:
        self._enqueued()(self, job, datetime)
        return super().schedule_job(job, datetime, pipeline=pipeline, unique=unique)


def queue_class(logger: Target) -> type[ObservedQueue]:
    """An :class:`ObservedQueue` subclass that logs through ``logger`` (or a batching
    logger over a storage or storage URL)."""
    enqueued = _Enqueued(TaskRecorder(sync_logger_for(logger)))
    return type("ObservedQueue", (ObservedQueue,), {"_omniq": enqueued})


def instrument(queue: Queue, logger: Target) -> Queue:
    """Make an existing ``queue`` log ENQUEUED through ``logger``; return it."""
    enqueued = _Enqueued(TaskRecorder(sync_logger_for(logger)))
    enqueue_job, schedule_job = queue.enqueue_job, queue.schedule_job

    def observed_enqueue(job: Job, *args: Any, **kwargs: Any) -> Job:
        enqueued(queue, job)
        return enqueue_job(job, *args, **kwargs)

    def observed_schedule(job: Job, when: datetime, *args: Any, **kwargs: Any) -> Job:
        enqueued(queue, job, when)
        return schedule_job(job, when, *args, **kwargs)

    queue.enqueue_job = observed_enqueue  # type: ignore[method-assign]
    queue.schedule_job = observed_schedule  # type: ignore[method-assign,assignment]
    return queue


class ObservedWorker(Worker):
    """An RQ ``Worker`` that logs each job's lifecycle (``rq worker --worker-class``).

    Used as is, it logs to ``OMNIQ_OBSERVE_STORAGE`` (default ``sqlite:///omniq-events.db``);
    :func:`worker_class` makes one with a logger of your choice.
    """

    _omniq: TaskRecorder | None = None

    @property
    def recorder(self) -> TaskRecorder:
        """The recorder every instance of this class logs through."""
        cls = type(self)
        if cls._omniq is None:
            cls._omniq = _recorder_from_env()
        return cls._omniq

    def perform_job(self, job: Job, queue: Queue) -> bool:
        self._omniq_exc: BaseException | None = None
        self.recorder.log(job.id, "STARTED", task_name=_name(job),
                          attempt=int(job.meta.get(_ATTEMPT, 1)))
        try:
            return super().perform_job(job, queue)
        finally:
            if getattr(self, "_is_horse", False):
                self.recorder.flush()  # the horse leaves with os._exit: no exit flush

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any) -> None:
        super().handle_job_success(job, queue, started_job_registry)
        self.recorder.log(job.id, "COMPLETED", task_name=_name(job),
                          attempt=int(job.meta.get(_ATTEMPT, 1)))

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        self._omniq_exc = exc_info[1] if len(exc_info) > 1 else None
        super().handle_exception(job, *exc_info)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None,
                           exc_string: str = "") -> None:
        try:
            events = self._failure_events(job, exc_string)
        except Exception:
            events = []
            self.recorder.errors += 1
        for event_type, details in events:  # before RQ may re-queue the job
            self.recorder.log(job.id, event_type, **details)
        _retrying.add(job.id)
        try:
            super().handle_job_failure(job, queue, started_job_registry, exc_string)
        finally:
            _retrying.discard(job.id)

    def _failure_events(self, job: Job, exc_string: str) -> list[tuple[str, dict[str, Any]]]:
        """What to log for a failed job, decided before RQ changes its state."""
        name, attempt = _name(job), int(job.meta.get(_ATTEMPT, 1))
        if self._stopped_job_id == job.id:
            return [("CANCELLED", {"task_name": name, "reason": "stopped", "attempt": attempt})]
        exc = getattr(self, "_omniq_exc", None)
        if isinstance(exc, JobTimeoutException):
            first: tuple[str, dict[str, Any]] = ("TIMEOUT", {
                "task_name": name, "attempt": attempt, "timeout_seconds": job.timeout,
                "error_type": type(exc).__name__})
        else:
            failure = self.recorder.failure(exc, exc_string or None) if exc is not None else {
                "error": exc_string.strip().splitlines()[0] if exc_string else "unknown",
                "error_type": "WorkHorseTerminated",
            }
            first = ("FAILED", {"task_name": name, "attempt": attempt, **failure})
        if not job.should_retry:
            return [first]
        interval = job.get_retry_interval()
        eta = datetime.now(timezone.utc) + timedelta(seconds=interval) if interval else None
        job.meta[_ATTEMPT] = attempt + 1  # saved with the job when RQ re-queues it
        retried = {"task_name": name, "attempt": attempt + 1, "eta": iso_time(eta),
                   "max_attempts": attempt + int(job.retries_left or 0)}
        return [first, ("RETRIED", retried)]

    def register_death(self) -> None:
        super().register_death()  # type: ignore[no-untyped-call]
        self.recorder.flush()


def worker_class(logger: Target) -> type[ObservedWorker]:
    """An :class:`ObservedWorker` subclass that logs through ``logger``.

    Put it in a module and pass its path: ``rq worker --worker-class myapp.obs.Worker``.
    """
    recorder = TaskRecorder(sync_logger_for(logger))
    return type("ObservedWorker", (ObservedWorker,), {"_omniq": recorder})


def _name(job: Job) -> str | None:
    try:
        return str(job.func_name)
    except Exception:  # an unloadable function: the job still runs (and fails) in RQ
        return None

