"""The taskiq broker and tasks of the integration tests (``taskiq worker it_taskiq:broker``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from taskiq import Context, SimpleRetryMiddleware, TaskiqDepends
from taskiq_redis import ListQueueBroker

from omniq_observe.integrations.taskiq import OmniqMiddleware

QUEUE = os.environ.get("OMNIQ_IT_QUEUE", "omniq-it")
middleware = OmniqMiddleware(os.environ.get("OMNIQ_IT_STORAGE", "memory://"))
broker = ListQueueBroker(
    os.environ.get("OMNIQ_IT_BROKER", "redis://127.0.0.1:6379/14"), queue_name=QUEUE
).with_middlewares(SimpleRetryMiddleware(default_retry_count=2), middleware)


@broker.task(task_name="it.ok")
async def ok() -> int:
    return 1


@broker.task(task_name="it.fail")
async def fail() -> None:
    raise ValueError("bad input, password=hunter2")


CONTEXT = TaskiqDepends()


@broker.task(task_name="it.flaky", retry_on_error=True, max_retries=2)
async def flaky(context: Context = CONTEXT) -> str:
    if not int(context.message.labels.get("_retries", 0)):
        raise ValueError("first attempt fails")
    return "ok"


@broker.task(task_name="it.slow", timeout=1)
async def slow() -> None:
    await asyncio.sleep(30)


async def _produce() -> dict[str, str]:
    await broker.startup()
    ids = {
        "ok": (await ok.kiq()).task_id,
        "fail": (await fail.kiq()).task_id,
        "retry": (await flaky.kiq()).task_id,
        "timeout": (await slow.kiq()).task_id,
    }
    await broker.shutdown()  # flushes the middleware's logger
    return ids


def produce(wait_started: Callable[[str], None]) -> dict[str, str]:
    return asyncio.run(_produce())
