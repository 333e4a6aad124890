"""The RQ jobs and worker class of the integration tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from redis import Redis
from rq import Retry, get_current_job
from rq.command import send_stop_job_command

from omniq_observe.integrations.rq import queue_class, worker_class

STORAGE = os.environ.get("OMNIQ_IT_STORAGE", "memory://")
Worker = worker_class(STORAGE)


def ok() -> int:
    return 1


def fail() -> None:
    raise ValueError("bad input, password=hunter2")


def flaky() -> str:
    job = get_current_job()
    assert job is not None
    if job.retries_left:  # the first run: one retry left
        raise ValueError("first attempt fails")
    return "ok"


def slow() -> None:
    time.sleep(30)


def produce(wait_started: Callable[[str], None]) -> dict[str, str]:
    connection = Redis.from_url(os.environ["OMNIQ_IT_BROKER"])
    queue = queue_class(STORAGE)(os.environ["OMNIQ_IT_QUEUE"], connection=connection)
    ids = {
        "ok": queue.enqueue(ok).id,
        "fail": queue.enqueue(fail).id,
        "retry": queue.enqueue(flaky, retry=Retry(max=1, interval=1)).id,
        "timeout": queue.enqueue(slow, job_timeout=1).id,
        "cancel": queue.enqueue(slow, job_timeout=60).id,
    }
    wait_started(ids["cancel"])
    send_stop_job_command(connection, ids["cancel"])
    queue._enqueued().recorder.flush(10)
    return ids
