"""No-op RQ jobs for the worker-overhead bench."""

from __future__ import annotations

from _common import BROKER, OBSERVE, QUEUE, STORAGE, count, produce, warm
from redis import Redis
from rq import Queue, Worker

if OBSERVE:
    from omniq_observe.integrations.rq import queue_class, worker_class

    BenchWorker: type[Worker] = worker_class(STORAGE)
    BenchQueue: type[Queue] = queue_class(STORAGE)
else:
    BenchWorker, BenchQueue = Worker, Queue


def noop() -> None:
    count()


queue = BenchQueue(QUEUE, connection=Redis.from_url(BROKER))


def enqueue(n: int) -> None:
    for _ in range(n):
        queue.enqueue("wb_rq.noop")


if __name__ == "__main__":
    warm(BenchQueue._enqueued().recorder.logger if OBSERVE else None)  # type: ignore[attr-defined]
    produce(enqueue)
