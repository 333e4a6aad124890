"""RQ: a real forking worker (one work horse per job) on Redis; producer in its own process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from _harness import STORAGES, child_env, clear_redis_db, require_redis, run_scenarios, storage_url

BROKER_DB = 11


@pytest.mark.parametrize("storage", STORAGES)
def test_rq(tmp_path: Path, storage: str) -> None:
    require_redis()
    queue = f"omniq-it-rq-{os.urandom(4).hex()}"
    broker = f"redis://127.0.0.1:6379/{BROKER_DB}"
    with storage_url(storage, tmp_path, "rq") as url:
        env = child_env(storage=url, broker=broker, queue=queue)
        rq = str(Path(sys.executable).parent / "rq")
        cmd = [rq, "worker", "-u", broker, "--worker-class", "it_rq.Worker",
               "--with-scheduler", "-q", queue]
        ids: dict[str, str] = {}
        try:
            ids = run_scenarios("rq", url, cmd, env, tmp_path / "worker.log")
        finally:
            clear_redis_db(BROKER_DB, f"*{queue}*")
            for task in ids.values():
                clear_redis_db(BROKER_DB, f"rq:*{task}*")
