"""Celery: real prefork workers on Redis (and once on RabbitMQ), producer in its own process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _harness import STORAGES, require_redis, run_framework
from _helpers import require_server


def celery_worker(queue: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "it_celery", "worker", "-Q", queue,
            "--pool", "prefork", "-c", "2", "--without-heartbeat", "--without-gossip",
            "--without-mingle", "-l", "warning", "-n", f"{queue}@%h"]


@pytest.mark.parametrize("storage", STORAGES)
def test_celery_on_redis(tmp_path: Path, storage: str) -> None:
    require_redis()
    run_framework(tmp_path, storage, "celery", "redis://127.0.0.1:6379/10", celery_worker)


def test_celery_on_rabbitmq(tmp_path: Path) -> None:
    require_server("RabbitMQ", "127.0.0.1", 5672)
    run_framework(tmp_path, "sqlite", "celery", "amqp://guest:guest@127.0.0.1:5672//",
                  celery_worker)
