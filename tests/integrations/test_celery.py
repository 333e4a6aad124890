"""Celery: real prefork workers on Redis (and once on RabbitMQ), producer in its own process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from _harness import STORAGES, child_env, clear_redis_db, require_redis, run_scenarios, storage_url
from conftest import require_server

BROKER_DB = 10


def run_celery(tmp_path: Path, storage: str, broker: str) -> None:
    queue = f"omniq-it-celery-{os.urandom(4).hex()}"
    with storage_url(storage, tmp_path, "celery") as url:
        env = child_env(storage=url, broker=broker, queue=queue)
        cmd = [sys.executable, "-m", "celery", "-A", "it_celery", "worker", "-Q", queue,
               "--pool", "prefork", "-c", "2", "--without-heartbeat", "--without-gossip",
               "--without-mingle", "-l", "warning", "-n", f"{queue}@%h"]
        try:
            run_scenarios("celery", url, cmd, env, tmp_path / "worker.log")
        finally:
            if broker.startswith("redis"):
                clear_redis_db(BROKER_DB, f"*{queue}*")


@pytest.mark.parametrize("storage", STORAGES)
def test_celery_on_redis(tmp_path: Path, storage: str) -> None:
    require_redis()
    run_celery(tmp_path, storage, f"redis://127.0.0.1:6379/{BROKER_DB}")


def test_celery_on_rabbitmq(tmp_path: Path) -> None:
    require_server("RabbitMQ", "127.0.0.1", 5672)
    run_celery(tmp_path, "sqlite", "amqp://guest:guest@127.0.0.1:5672//")
