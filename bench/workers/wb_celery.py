"""No-op Celery tasks for the worker-overhead bench."""

from __future__ import annotations

from _common import BROKER, OBSERVE, QUEUE, STORAGE, count, produce, warm
from celery import Celery

app = Celery("omniq_bench", broker=BROKER)
app.conf.update(task_default_queue=QUEUE, task_ignore_result=True,
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
if OBSERVE:
    from omniq_observe.integrations.celery import instrument

    instrumentation = instrument(app, STORAGE)


@app.task(name="bench.noop")
def noop() -> None:
    count()


def enqueue(n: int) -> None:
    for _ in range(n):
        noop.delay()


if __name__ == "__main__":
    warm(instrumentation.logger if OBSERVE else None)
    produce(enqueue, lambda: OBSERVE and instrumentation.logger.flush(30))
