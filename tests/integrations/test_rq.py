"""RQ: a real forking worker (one work horse per job) on Redis; producer in its own process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from _harness import (
    CANCEL,
    FAIL,
    OK,
    RETRY,
    STORAGES,
    TIMEOUT,
    check_derived,
    child_env,
    clear_redis_db,
    produce,
    require_redis,
    storage_url,
    wait_for_lifecycles,
    worker,
)

EXPECTED = {"ok": OK, "fail": FAIL, "retry": RETRY, "timeout": TIMEOUT, "cancel": CANCEL}
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
        log = tmp_path / "worker.log"
        ids: dict[str, str] = {}
        try:
            with worker(cmd, env, log):
                result = produce("rq", env)
                ids = result["ids"]
                expected = {ids[name]: types for name, types in EXPECTED.items()}
                wait_for_lifecycles(url, expected, log)
            check_derived(url, queue, ids, expected, result["trace_id"])
        finally:
            for pattern in [f"*{queue}*", *(f"rq:*{task}*" for task in ids.values())]:
                clear_redis_db(BROKER_DB, pattern)
