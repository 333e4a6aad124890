"""The arq functions and WorkerSettings of the integration tests (``arq it_arq.WorkerSettings``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from arq import Retry, create_pool
from arq.connections import RedisSettings
from arq.jobs import Job
from arq.worker import func

from omniq_observe.integrations.arq import ArqHooks, instrument

QUEUE = os.environ.get("OMNIQ_IT_QUEUE", "omniq-it")
STORAGE = os.environ.get("OMNIQ_IT_STORAGE", "memory://")
REDIS = RedisSettings(host="127.0.0.1", port=6379, database=13)
hooks = ArqHooks(STORAGE, queue_name=QUEUE)


async def ok(ctx: dict[str, Any]) -> int:
    return 1


async def fail(ctx: dict[str, Any]) -> None:
    raise ValueError("bad input, password=hunter2")


async def flaky(ctx: dict[str, Any]) -> str:
    if ctx["job_try"] == 1:
        raise Retry(defer=0.3)
    return "ok"


async def slow(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(30)


class WorkerSettings:
    functions = [ok, fail, flaky, func(slow, name="slow", timeout=1), func(slow, name="sleepy")]
    redis_settings = REDIS
    queue_name = QUEUE
    allow_abort_jobs = True
    poll_delay = 0.05
    on_job_start = hooks.on_job_start
    on_job_end = hooks.on_job_end
    after_job_end = hooks.after_job_end
    on_shutdown = hooks.on_shutdown


async def _produce(wait_started: Callable[[str], None]) -> dict[str, str]:
    redis = instrument(await create_pool(REDIS, default_queue_name=QUEUE), STORAGE)
    ids = {}
    for name, function in [("ok", "ok"), ("fail", "fail"), ("retry", "flaky"),
                           ("timeout", "slow"), ("cancel", "sleepy")]:
        job = await redis.enqueue_job(function)
        assert job is not None
        ids[name] = job.job_id
    await redis.omniq_recorder.logger.flush(10)
    await asyncio.to_thread(wait_started, ids["cancel"])
    assert await Job(ids["cancel"], redis, _queue_name=QUEUE).abort(timeout=10, poll_delay=0.05)
    await redis.aclose()
    return ids


def produce(wait_started: Callable[[str], None]) -> dict[str, str]:
    return asyncio.run(_produce(wait_started))
