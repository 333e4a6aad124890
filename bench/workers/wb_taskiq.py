"""No-op taskiq tasks for the worker-overhead bench."""

from __future__ import annotations

import asyncio

from _common import BROKER, OBSERVE, QUEUE, STORAGE, count, produce
from taskiq_redis import ListQueueBroker

broker = ListQueueBroker(BROKER, queue_name=QUEUE)
if OBSERVE:
    from omniq_observe.integrations.taskiq import OmniqMiddleware

    broker = broker.with_middlewares(OmniqMiddleware(STORAGE))


@broker.task(task_name="bench.noop")
async def noop() -> None:
    count()


async def _enqueue(n: int) -> None:
    await broker.startup()
    for _ in range(n):
        await noop.kiq()
    await broker.shutdown()


if __name__ == "__main__":
    produce(lambda n: asyncio.run(_enqueue(n)))
