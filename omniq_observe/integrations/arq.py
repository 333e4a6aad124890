"""arq: a wrapper for ``enqueue_job`` and the job hooks of ``WorkerSettings``.

Producer: ``instrument(redis, logger)`` makes ``redis.enqueue_job`` log ENQUEUED
(``queue_name``, ``task_name``, ``eta`` for ``_defer_by``/``_defer_until``) before the job
is pushed, in the caller's span. The job id is arq's (made here when you pass none).

Worker: ``ArqHooks(logger)`` gives ``on_job_start`` (STARTED, ``attempt`` = arq's
``job_try``), ``on_job_end`` (notes the end time) and ``after_job_end``, which reads the
job's stored result and logs COMPLETED, FAILED (``error_type``; arq keeps no traceback),
TIMEOUT (the function's or the worker's ``timeout``) or CANCELLED (``Job.abort()``, with
``allow_abort_jobs=True``); a job with no result was re-queued by ``Retry`` (or a
cancellation arq runs again): RETRIED, with the ``eta`` arq scheduled it for.

arq cannot report: the exception behind a ``Retry`` (the function raises ``Retry`` itself,
so there is no FAILED before RETRIED), a job aborted before it started, and results when
``keep_result=0`` (the terminal event is then missing).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from omniq_observe.exceptions import MissingExtraError

try:
    from arq.connections import ArqRedis
    from arq.constants import default_queue_name
    from arq.jobs import Job
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    msg = "omniq_observe.integrations.arq needs arq: pip install 'omniq-observe[arq]'"
    raise MissingExtraError(msg) from exc

from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.events.logger import AsyncEventLogger
from omniq_observe.integrations._common import TaskRecorder, async_logger_for, iso_time

__all__ = ["ArqHooks", "instrument"]

Target = AsyncEventLogger | BaseEventStorage | str
_END = "omniq_end"  # ctx key: when the job's function ended


def instrument(redis: ArqRedis, logger: Target) -> ArqRedis:
    """Make ``redis.enqueue_job`` log ENQUEUED through ``logger``; return ``redis``."""
    recorder = TaskRecorder(async_logger_for(logger))
    original = redis.enqueue_job

    async def enqueue_job(function: str, *args: Any, _job_id: str | None = None,
                          _queue_name: str | None = None, **kwargs: Any) -> Job | None:
        job_id = _job_id or uuid.uuid4().hex
        await recorder.alog(
            job_id, "ENQUEUED", queue_name=_queue_name or redis.default_queue_name,
            task_name=function, eta=_eta(kwargs.get("_defer_until"), kwargs.get("_defer_by")),
        )
        return await original(function, *args, _job_id=job_id, _queue_name=_queue_name,
                              **kwargs)

    redis.enqueue_job = enqueue_job  # type: ignore[method-assign]
    redis.omniq_recorder = recorder  # type: ignore[attr-defined]
    return redis


class ArqHooks:
    """The job hooks to put in ``WorkerSettings``; never raise into the worker.

    Args:
        logger: an ``AsyncEventLogger`` (``batch=True`` recommended), or a storage backend
            or storage URL to get a batching one.
        queue_name: the worker's queue (to find re-queued jobs); arq's default otherwise.
    """

    def __init__(self, logger: Target, queue_name: str = default_queue_name) -> None:
        self.logger = async_logger_for(logger)
        self.recorder = TaskRecorder(self.logger)
        self.queue_name = queue_name

    async def on_job_start(self, ctx: dict[str, Any]) -> None:
        """STARTED, with ``attempt`` = ``job_try``."""
        await self.recorder.alog(ctx["job_id"], "STARTED", attempt=ctx.get("job_try"))

    async def on_job_end(self, ctx: dict[str, Any]) -> None:
        """Note when the function ended (the terminal event's time)."""
        ctx[_END] = datetime.now(timezone.utc)

    async def after_job_end(self, ctx: dict[str, Any]) -> None:
        """The terminal event (or RETRIED), from the result arq stored."""
        try:
            event_type, details = await self._outcome(ctx)
        except Exception:
            self.recorder.errors += 1
            return
        await self.recorder.alog(ctx["job_id"], event_type, ctx.get(_END), **details)

    async def on_shutdown(self, ctx: dict[str, Any]) -> None:
        """Store what is still queued (use as, or call from, ``WorkerSettings.on_shutdown``)."""
        try:
            await self.logger.flush(5.0)
        except Exception:
            self.recorder.errors += 1

    async def _outcome(self, ctx: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        redis, job_id, attempt = ctx["redis"], ctx["job_id"], ctx.get("job_try")
        info = await Job(job_id, redis, _queue_name=self.queue_name).result_info()
        if info is None:  # not finished: arq re-queued it
            score = await redis.zscore(self.queue_name, job_id)
            eta = iso_time(score / 1000) if score else None
            return "RETRIED", {"attempt": (attempt or 1) + 1, "eta": eta}
        details: dict[str, Any] = {"task_name": info.function, "attempt": attempt}
        if info.success:
            return "COMPLETED", details
        error = info.result
        if isinstance(error, TimeoutError):
            return "TIMEOUT", {**details, "error_type": "TimeoutError"}
        if isinstance(error, BaseException) and type(error).__name__ == "CancelledError":
            return "CANCELLED", {**details, "reason": "aborted"}
        if isinstance(error, BaseException):
            return "FAILED", {**details, **self.recorder.failure(error, "")}
        return "FAILED", {**details, "error": str(error)[:1024]}


def _eta(until: Any, by: Any) -> str | None:
    if until is not None:
        return iso_time(until)
    if by is None:
        return None
    seconds = by.total_seconds() if isinstance(by, timedelta) else float(by)
    return iso_time(datetime.now(timezone.utc) + timedelta(seconds=seconds))
