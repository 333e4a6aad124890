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


def main() -> None:
    loop = asyncio.new_event_loop()
    loop.run_until_complete(broker.startup())
    if OBSERVE:  # the producer side, its storage opened before the clock starts
        recorder = broker.middlewares[-1].recorder  # type: ignore[attr-defined]
        loop.run_until_complete(recorder.alog("bench-warm-up", "CUSTOM"))
        loop.run_until_complete(recorder.logger.flush(30))

    async def enqueue(n: int) -> None:
        for _ in range(n):
            await noop.kiq()

    produce(lambda n: loop.run_until_complete(enqueue(n)))
    loop.run_until_complete(broker.shutdown())


if __name__ == "__main__":
    main()
