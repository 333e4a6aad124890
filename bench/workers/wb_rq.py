"""No-op RQ jobs for the worker-overhead bench."""

from __future__ import annotations

from _common import BROKER, OBSERVE, QUEUE, STORAGE, count, produce
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


def enqueue(n: int) -> None:
    queue = BenchQueue(QUEUE, connection=Redis.from_url(BROKER))
    for _ in range(n):
        queue.enqueue(noop)


if __name__ == "__main__":
    produce(enqueue)
