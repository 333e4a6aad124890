"""arq: a real worker process on Redis; producer in its own process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from _harness import (
    SCENARIOS,
    STORAGES,
    child_env,
    clear_redis_db,
    require_redis,
    run_scenarios,
    storage_url,
)

BROKER_DB = 13
# arq's Retry is raised by the function itself: there is no FAILED before RETRIED
RETRY_ARQ = ["ENQUEUED", "STARTED", "RETRIED", "STARTED", "COMPLETED"]


@pytest.mark.parametrize("storage", STORAGES)
def test_arq(tmp_path: Path, storage: str) -> None:
    require_redis()
    queue = f"omniq-it-arq-{os.urandom(4).hex()}"
    with storage_url(storage, tmp_path, "arq") as url:
        env = child_env(storage=url, queue=queue)
        cmd = [str(Path(sys.executable).parent / "arq"), "it_arq.WorkerSettings"]
        ids: dict[str, str] = {}
        try:
            scenarios = {**SCENARIOS, "retry": RETRY_ARQ}
            ids = run_scenarios("arq", url, cmd, env, tmp_path / "worker.log", scenarios)
        finally:
            clear_redis_db(BROKER_DB, f"*{queue}*")
            for task in ids.values():
                clear_redis_db(BROKER_DB, f"arq:*{task}*")
