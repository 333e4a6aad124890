"""No-op Dramatiq actors for the worker-overhead bench."""

from __future__ import annotations

import dramatiq
from _common import BROKER, OBSERVE, QUEUE, STORAGE, count, produce, warm
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=BROKER, namespace=f"{QUEUE}-ns")
if OBSERVE:
    from omniq_observe.integrations.dramatiq import instrument

    middleware = instrument(broker, STORAGE)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    count()


def enqueue(n: int) -> None:
    for _ in range(n):
        noop.send()


if __name__ == "__main__":
    warm(middleware.logger if OBSERVE else None)
    produce(enqueue, lambda: OBSERVE and middleware.logger.flush(30))
