"""The Dramatiq broker and actors of the integration tests (``dramatiq it_dramatiq``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from omniq_observe.integrations.dramatiq import instrument

QUEUE = os.environ.get("OMNIQ_IT_QUEUE", "omniq-it")
broker = RedisBroker(url=os.environ.get("OMNIQ_IT_BROKER", "redis://127.0.0.1:6379/12"),
                     namespace=f"{QUEUE}-ns")
broker.add_middleware(CurrentMessage())
middleware = instrument(broker, os.environ.get("OMNIQ_IT_STORAGE", "memory://"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def ok() -> int:
    return 1


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def fail() -> None:
    raise ValueError("bad input, password=hunter2")


@dramatiq.actor(queue_name=QUEUE, max_retries=1, min_backoff=300, max_backoff=300)
def flaky() -> str:
    message = CurrentMessage.get_current_message()
    if not message.options.get("retries"):
        raise ValueError("first attempt fails")
    return "ok"


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=1000)
def slow() -> None:
    for _ in range(300):  # TimeLimit interrupts between bytecodes, not inside sleep(30)
        time.sleep(0.1)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, max_age=500)
def stale() -> None:
    raise AssertionError("the AgeLimit middleware skips it")


def produce(wait_started: Callable[[str], None]) -> dict[str, str]:
    ids = {
        "ok": ok.send().message_id,
        "fail": fail.send().message_id,
        "retry": flaky.send().message_id,
        "timeout": slow.send().message_id,
        "cancel": stale.send_with_options(delay=1000).message_id,
    }
    middleware.logger.flush(10)
    return ids
