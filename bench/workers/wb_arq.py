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


async def _connect() -> Any:
    redis = await create_pool(REDIS, default_queue_name=QUEUE)
    if OBSERVE:  # the producer side, its storage opened before the clock starts
        from omniq_observe.integrations.arq import instrument

        instrument(redis, STORAGE)
        await redis.omniq_recorder.alog("bench-warm-up", "CUSTOM")  # type: ignore[attr-defined]
        await redis.omniq_recorder.logger.flush(30)  # type: ignore[attr-defined]
    return redis


def main() -> None:
    loop = asyncio.new_event_loop()
    redis = loop.run_until_complete(_connect())

    async def enqueue(n: int) -> None:
        for _ in range(n):
            await redis.enqueue_job("noop")

    async def close() -> None:
        if OBSERVE:
            await redis.omniq_recorder.logger.flush(30)
        await redis.aclose()

    produce(lambda n: loop.run_until_complete(enqueue(n)))
    loop.run_until_complete(close())


if __name__ == "__main__":
    main()
