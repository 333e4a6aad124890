"""taskiq: a real worker process on Redis (taskiq-redis); producer in its own process."""

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

BROKER_DB = 14


@pytest.mark.parametrize("storage", STORAGES)
def test_taskiq(tmp_path: Path, storage: str) -> None:
    require_redis()
    queue = f"omniq-it-taskiq-{os.urandom(4).hex()}"
    with storage_url(storage, tmp_path, "taskiq") as url:
        env = child_env(storage=url, broker=f"redis://127.0.0.1:6379/{BROKER_DB}", queue=queue)
        cmd = [str(Path(sys.executable).parent / "taskiq"), "worker", "it_taskiq:broker",
               "--workers", "1", "--no-configure-logging"]
        scenarios = {name: SCENARIOS[name] for name in ("ok", "fail", "retry", "timeout")}
        try:  # taskiq cannot cancel a task
            run_scenarios("taskiq", url, cmd, env, tmp_path / "worker.log", scenarios)
        finally:
            clear_redis_db(BROKER_DB, f"*{queue}*")
