"""No-op arq jobs for the worker-overhead bench."""

from __future__ import annotations

import asyncio
from typing import Any

from _common import OBSERVE, QUEUE, STORAGE, count, produce
from arq import create_pool
from arq.connections import RedisSettings

REDIS = RedisSettings(host="127.0.0.1", port=6379, database=15)


async def noop(ctx: dict[str, Any]) -> None:
    count()


class WorkerSettings:
    functions = [noop]
    redis_settings = REDIS
    queue_name = QUEUE
    poll_delay = 0.01
    max_jobs = 50


if OBSERVE:
    from omniq_observe.integrations.arq import ArqHooks

    hooks = ArqHooks(STORAGE, queue_name=QUEUE)
    WorkerSettings.on_job_start = hooks.on_job_start  # type: ignore[attr-defined]
    WorkerSettings.on_job_end = hooks.on_job_end  # type: ignore[attr-defined]
    WorkerSettings.after_job_end = hooks.after_job_end  # type: ignore[attr-defined]


async def _enqueue(n: int) -> None:
    redis = await create_pool(REDIS, default_queue_name=QUEUE)
    if OBSERVE:
        from omniq_observe.integrations.arq import instrument

        instrument(redis, STORAGE)
    for _ in range(n):
        await redis.enqueue_job("noop")
    if OBSERVE:
        await redis.omniq_recorder.logger.flush(30)  # type: ignore[attr-defined]
    await redis.aclose()


if __name__ == "__main__":
    produce(lambda n: asyncio.run(_enqueue(n)))
