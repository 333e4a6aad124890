"""The Celery app of the integration tests (worker: ``celery -A it_celery worker``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from celery import Celery

from omniq_observe.integrations.celery import instrument

QUEUE = os.environ.get("OMNIQ_IT_QUEUE", "omniq-it")
app = Celery("omniq_it", broker=os.environ.get("OMNIQ_IT_BROKER", "memory://"))
app.conf.update(
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_ignore_result=True,
)
instrumentation = instrument(app, os.environ.get("OMNIQ_IT_STORAGE", "memory://"))


@app.task(name="it.ok")
def ok() -> int:
    return 1


@app.task(name="it.fail")
def fail() -> None:
    raise ValueError("bad input, password=hunter2")


@app.task(name="it.flaky", bind=True, max_retries=2)
def flaky(self) -> str:  # type: ignore[no-untyped-def]
    if self.request.retries == 0:
        try:
            raise ValueError("first attempt fails")
        except ValueError as exc:
            raise self.retry(exc=exc, countdown=0.3) from exc
    return "ok"


@app.task(name="it.slow", time_limit=1)
def slow() -> None:
    time.sleep(30)


@app.task(name="it.sleepy")
def sleepy() -> None:
    time.sleep(30)


def produce(wait_started: Callable[[str], None]) -> dict[str, str]:
    ids = {
        "ok": ok.delay().id,
        "fail": fail.delay().id,
        "retry": flaky.delay().id,
        "timeout": slow.delay().id,
        "cancel": sleepy.delay().id,
    }
    wait_started(ids["cancel"])
    app.control.revoke(ids["cancel"], terminate=True, signal="SIGKILL")
    instrumentation.logger.flush(10)
    return ids
